"""Serving benchmarks: `python -m benchmarks.serving.<name>` (web, load, saliency, serve_tta,
upload_memory)."""
