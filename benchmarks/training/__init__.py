"""Training benchmarks: `python -m benchmarks.training.<name>` (torch_peer, train_speed,
profile_step, conv, gpu_step, gpu_runs)."""
