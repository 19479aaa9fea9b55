"""Root URLs: the admin and the uploads app (pages, JSON API, health check, media)."""

from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Image classifier administration"
admin.site.site_title = "Image classifier admin"
admin.site.index_title = "Uploads and predictions"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("teach/", include("teaching.urls")),
    path("", include("uploads.urls")),
]

handler400 = "uploads.views.bad_request"
handler403 = "uploads.views.permission_denied"
handler404 = "uploads.views.page_not_found"
handler500 = "uploads.views.server_error"
