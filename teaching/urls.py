from django.urls import path

from teaching import views

app_name = "teaching"

urlpatterns = [
    path("", views.classifier_list, name="list"),
    path("<int:pk>/", views.classifier_detail, name="detail"),
    path("<int:pk>/status.json", views.job_status, name="status"),
    path("<int:pk>/classes/<int:class_pk>/examples/", views.add_examples, name="add-examples"),
    path("<int:pk>/examples/<int:example_pk>/delete/", views.remove_example, name="remove"),
    path("<int:pk>/examples/<int:example_pk>/<str:kind>", views.example_image, name="image"),
    path("<int:pk>/train/", views.train, name="train"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
    path("<int:pk>/retrain/", views.retrain, name="retrain"),
    path("<int:pk>/restore/", views.restore, name="restore"),
    path("<int:pk>/classify/", views.classify, name="classify"),
    path("<int:pk>/delete/", views.delete, name="delete"),
    path("s/<str:token>/", views.shared, name="share"),
]
