from django.urls import path

from uploads import api, views

app_name = "uploads"

urlpatterns = [
    path("", views.classify, name="classify"),
    path("results/", views.results, name="results"),
    path("history/", views.PredictionListView.as_view(), name="history"),
    path("predictions/<int:pk>/", views.PredictionDetailView.as_view(), name="detail"),
    path("media/<path:name>", views.serve_media, name="media"),
    path("api/predict", api.predict, name="api-predict"),
    path("api/predictions", api.list_predictions, name="api-predictions"),
    path("api/predictions/<int:pk>", api.get_prediction, name="api-prediction"),
    path("api/models", api.list_models, name="api-models"),
    path("api/openapi.json", api.openapi, name="api-openapi"),
    path("healthz", api.healthz, name="healthz"),
]
