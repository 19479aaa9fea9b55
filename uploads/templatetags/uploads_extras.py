"""Small display helpers for the uploads templates."""

from django import template
from django.urls import NoReverseMatch, reverse

from research import configs

register = template.Library()


@register.filter
def percent(value: float | None, digits: int = 1) -> str:
    """0.1234 -> '12.3%'; None -> '—'."""
    if value is None:
        return "—"
    return f"{float(value) * 100:.{int(digits)}f}%"


@register.filter
def dataset_title(dataset: str) -> str:
    """'cifar10' -> 'CIFAR-10'."""
    return configs.dataset_title(dataset)


@register.filter
def milliseconds(value: float | None) -> str:
    """12.345 -> '12 ms'; 0.42 -> '0.4 ms'."""
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@register.filter
def model_url(name: str) -> str:
    """A model name -> its page's URL ('' for a name no URL can hold)."""
    try:
        return reverse("uploads:model", args=[name])
    except NoReverseMatch:
        return ""


@register.filter
def number(value: float | None, digits: int = 3) -> str:
    """1.23456 -> '1.235'; None -> '—'."""
    if value is None:
        return "—"
    return f"{float(value):.{int(digits)}g}"


@register.filter
def errors_only(messages) -> bool:
    """Whether any of the request's messages is an error (the page then announces them)."""
    return any(message.level_tag == "error" for message in messages)
