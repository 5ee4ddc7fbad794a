from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Greeting",
            fields=[
                (
                    "id",
                    models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"),
                ),
                ("text", models.CharField(max_length=200)),
                ("language", models.CharField(max_length=8)),
            ],
            options={"ordering": ["id"]},
        ),
    ]
