"""Benchmarks that print figures (and, with --json where offered, write them): `training`
(the step against PyTorch's, the loop's speed, profiles, convolutions, GPU runs) and `serving`
(the web's latency and throughput, load through nginx, saliency, test-time views, upload memory).
Run each as `python -m benchmarks.<kind>.<name>`; docs/benchmarks.md quotes their figures with
the command that produced them."""
