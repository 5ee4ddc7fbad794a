from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(help_text="Markdown")
    price_cents = models.PositiveIntegerField()

    def __str__(self) -> str:
        return self.name
