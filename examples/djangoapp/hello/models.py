from django.db import models


class Greeting(models.Model):
    text = models.CharField(max_length=200)
    language = models.CharField(max_length=8)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.text
