from django.urls import path

from uploads import api, metrics, views

app_name = "uploads"

urlpatterns = [
    path("", views.classify, name="classify"),
    path("results/", views.results, name="results"),
    path("history/", views.PredictionListView.as_view(), name="history"),
    path("predictions/<int:pk>/", views.PredictionDetailView.as_view(), name="detail"),
    path("predictions/<int:pk>/feedback/", views.give_feedback, name="feedback"),
    path("predictions/<int:pk>/delete/", views.delete_prediction, name="delete"),
    path("predictions/<int:pk>/share/", views.change_share_link, name="share-link"),
    path("s/<str:token>/", views.shared, name="share"),
    path("models/<str:name>/", views.model_detail, name="model"),
    path("models/<str:name>/reliability.png", views.model_reliability, name="model-reliability"),
    path(
        "models/<str:name>/risk-coverage.png",
        views.model_risk_coverage,
        name="model-risk-coverage",
    ),
    path(
        "models/<str:name>/confusion/<int:true_index>/<int:predicted_index>/",
        views.model_confusion,
        name="model-confusion",
    ),
    path("models/<str:name>/report/<path:file>", views.model_report_file, name="model-report-file"),
    path("models/<str:name>/examples/<str:file>", views.model_example, name="model-example"),
    path("media/<path:name>", views.serve_media, name="media"),
    path("api/predict", api.PredictView.as_view(), name="api-predict"),
    path("api/classify", api.ClassifyView.as_view(), name="api-classify"),
    path("api/predictions", api.PredictionListView.as_view(), name="api-predictions"),
    path("api/predictions/<int:pk>", api.PredictionDetailView.as_view(), name="api-prediction"),
    path("api/predictions/<int:pk>/saliency.png", api.SaliencyView.as_view(), name="api-saliency"),
    path(
        "api/predictions/<int:pk>/model-input.png",
        api.ModelInputView.as_view(),
        name="api-model-input",
    ),
    path("api/predictions/<int:pk>/feedback", api.FeedbackView.as_view(), name="api-feedback"),
    path("api/models", api.ModelListView.as_view(), name="api-models"),
    path("api/openapi.json", api.SchemaView.as_view(), name="api-openapi"),
    path("api/docs/", api.DocsView.as_view(), name="api-docs"),
    path("healthz", api.HealthView.as_view(), name="healthz"),  # = readyz, kept for old probes
    path("readyz", api.ReadinessView.as_view(), name="readyz"),
    path("livez", api.LivenessView.as_view(), name="livez"),
    path("metrics", metrics.serve_metrics, name="metrics"),
    # Browsers ask for /favicon.ico on pages without an icon link (the admin's).
    path("favicon.ico", views.favicon, name="favicon"),
]
