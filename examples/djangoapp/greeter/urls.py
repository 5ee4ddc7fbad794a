from django.urls import path
from hello import views

urlpatterns = [
    path("", views.index, name="index"),
    path("health", views.health, name="health"),
    path("upload/<str:name>", views.upload, name="upload"),
]
