from django.apps import AppConfig


class HelloConfig(AppConfig):
    name = "hello"
    default_auto_field = "django.db.models.BigAutoField"
