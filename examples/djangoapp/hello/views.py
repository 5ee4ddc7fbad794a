"""The page shows which release and instance answered, and what the database
holds, so that tests can tell releases apart and see that migrate ran."""

import json
import re
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.db.migrations.recorder import MigrationRecorder
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from .models import Greeting


def release_info() -> dict:
    try:
        release = (Path(settings.BASE_DIR) / "RELEASE.txt").read_text().strip()
    except OSError:
        release = "unknown"
    return {
        "instance": settings.INSTANCE,
        "release": release,
        "release_dir": Path(settings.BASE_DIR).name,
    }


def database_info() -> dict:
    """Raises DatabaseError when the database is missing or not migrated."""
    applied = MigrationRecorder.Migration.objects.filter(app="hello").order_by("name")
    return {
        "greetings": Greeting.objects.count(),
        "migrations": [m.name for m in applied],
    }


def index(request):
    info = release_info()
    try:
        info.update(database_info())
        info["texts"] = list(Greeting.objects.values_list("text", flat=True))
    except DatabaseError as e:
        return HttpResponse(f"database not ready: {e}\n", status=503, content_type="text/plain")
    return render(request, "hello/index.html", info)


def health(request):
    info = release_info()
    try:
        info.update(database_info())
        status = 200
    except DatabaseError as e:
        info["error"] = str(e)
        status = 503
    return HttpResponse(json.dumps(info), status=status, content_type="application/json")


@require_POST
def upload(request, name):
    """Keep the request's body as MEDIA_ROOT/<name>, which Apache serves at /media/<name>:
    what a site's users upload, which must outlive every release."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) or len(request.body) > 1024 * 1024:
        return HttpResponse("a plain file name and at most 1 MiB\n", status=400, content_type="text/plain")
    media = Path(settings.MEDIA_ROOT)
    media.mkdir(exist_ok=True)
    (media / name).write_bytes(request.body)
    return HttpResponse(f"{settings.MEDIA_URL}{name}\n", status=201, content_type="text/plain")
