"""Settings of the greeter example, a Django app that deployer deploys.

One SQLite database per instance, and the files people upload, in the
instance's shared directory (see DATA_DIR below), which the lab keeps on
storage all its web hosts share (standing in for a database server and NFS). The instance name comes from
CONFIG_NAME (exported by deployer to the migrate command) or, under mod_wsgi,
from the daemon process group, which the vhost template names after it.
"""

import os
import re
from pathlib import Path

# The release directory itself, not the DEPLOY_PATH symlink that leads to it.
BASE_DIR = Path(__file__).resolve().parent.parent


def instance_name() -> str:
    name = os.environ.get("CONFIG_NAME", "")
    if not name:
        try:
            import mod_wsgi  # only importable inside Apache

            name = mod_wsgi.process_group
        except (ImportError, AttributeError):
            name = ""
    name = name or "default"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"instance name {name!r} cannot name a database file")
    return name


INSTANCE = instance_name()
# What outlives a release. Deployed with `shared: {dirs: [data, media]}` in
# targets.yaml, both are links into the instance's shared directory; a
# release made by other means (the benchmark's contenders, the lab's deploy
# by hand) keeps them in DEPLOYER_SHARED_DIR instead.
if (BASE_DIR / "data").is_dir():
    DATA_DIR, MEDIA_ROOT = BASE_DIR / "data", BASE_DIR / "media"
else:
    DATA_DIR = Path(os.environ.get("DEPLOYER_SHARED_DIR", "/srv/deployer-shared"))
    MEDIA_ROOT = DATA_DIR / f"{INSTANCE}-media"
# Apache serves <DEPLOY_PATH>/media/ itself (Alias in the vhost).
MEDIA_URL = "/media/"

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "greeter-example-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = [".example.test", ".example.com", "local.test", "localhost", "127.0.0.1"]

INSTALLED_APPS = ["hello"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "greeter.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {},
    }
]
WSGI_APPLICATION = None  # served through django.wsgi

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / f"{INSTANCE}.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
# Apache serves <DEPLOY_PATH>/static/ itself (Alias in the vhost).
STATIC_URL = "/static/"
STATIC_ROOT = str(BASE_DIR / "static")

# Errors to stderr, which mod_wsgi sends to the instance's Apache error log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
