from catalog import views
from django.urls import include, path
from rest_framework import routers

router = routers.DefaultRouter()
router.register("products", views.ProductViewSet)

urlpatterns = [
    path("", views.index),
    path("health", views.health),
    path("version", views.version),
    path("api/", include(router.urls)),
]
