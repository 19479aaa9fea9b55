"""Settings split by purpose: base (shared), dev, test and production.

Pick one with DJANGO_SETTINGS_MODULE; manage.py defaults to dev, wsgi/asgi to production.
"""
