"""WSGI entry point, loaded by mod_wsgi from <DEPLOY_PATH>/django.wsgi.

DEPLOY_PATH is a symlink to the live release; a graceful restart starts fresh
daemon processes that import through it, so they load the new release.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "greeter.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
