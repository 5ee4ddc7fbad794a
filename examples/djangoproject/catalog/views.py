import platform
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import bleach
import django
import markdown
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from rest_framework import serializers, viewsets

from catalog.models import Product


class ProductSerializer(serializers.ModelSerializer):
    class Meta:
        model = Product
        fields = ["id", "name", "description", "price_cents"]


class ProductViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Product.objects.order_by("name")
    serializer_class = ProductSerializer
    filterset_fields = ["name"]


# What a product's Markdown may become: no scripts, no links, no images.
TAGS = {"p", "em", "strong", "code", "ul", "ol", "li"}


def index(request):
    items = "".join(f"<li>{bleach.clean(p.name)}: {bleach.clean(markdown.markdown(p.description), tags=TAGS)}</li>"
                    for p in Product.objects.order_by("name"))
    return HttpResponse(f"<link rel=stylesheet href='/static/catalog/site.css'><ul>{items}</ul>")


def health(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return JsonResponse({"ok": True})


def version(request):
    """What the release runs on: for people, and for the lab's test."""
    return JsonResponse({
        "release": Path(settings.BASE_DIR).name,
        "python": platform.python_version(),
        "prefix": sys.prefix,
        "django": django.get_version(),
        "markdown": dist_version("Markdown"),
        "database": connection.settings_dict["NAME"],
        "products": Product.objects.count(),
    })
