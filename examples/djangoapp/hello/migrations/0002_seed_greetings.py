from django.db import migrations

GREETINGS = [("Hello", "en"), ("Bonjour", "fr"), ("Hallo", "de")]


def seed(apps, schema_editor):
    Greeting = apps.get_model("hello", "Greeting")
    Greeting.objects.bulk_create(Greeting(text=t, language=lang) for t, lang in GREETINGS)


def unseed(apps, schema_editor):
    Greeting = apps.get_model("hello", "Greeting")
    Greeting.objects.filter(text__in=[t for t, _ in GREETINGS]).delete()


class Migration(migrations.Migration):
    dependencies = [("hello", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
