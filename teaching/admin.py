from django.contrib import admin

from teaching.models import Example, TaughtClass, TaughtClassifier, TrainingJob


class TaughtClassInline(admin.TabularInline):
    model = TaughtClass
    extra = 0


@admin.register(TaughtClassifier)
class TaughtClassifierAdmin(admin.ModelAdmin):
    list_display = ["name", "backbone", "model_name", "created_at"]
    search_fields = ["name", "model_name"]
    readonly_fields = ["model_name", "owner_key", "share_token", "created_at"]
    inlines = [TaughtClassInline]


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ["pk", "classifier", "status", "accuracy", "version", "published", "created_at"]
    list_filter = ["status", "published", "retrain"]
    readonly_fields = [f.name for f in TrainingJob._meta.fields]


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ["pk", "taught_class", "source", "created_at"]
    list_filter = ["source"]
    readonly_fields = ["image", "thumbnail", "sha256", "prediction_id", "created_at"]
