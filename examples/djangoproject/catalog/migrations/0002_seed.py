from django.db import migrations

PRODUCTS = [("Teapot", "A *short* and **stout** teapot.", 2400), ("Cup", "Holds `tea`.", 600)]


def seed(apps, schema_editor):
    Product = apps.get_model("catalog", "Product")
    for name, description, price in PRODUCTS:
        Product.objects.get_or_create(name=name, defaults={"description": description, "price_cents": price})


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
