"""The networks: `layers` (convolutions with their CPU and accelerator implementations, mixed
precision) and `models` (the CNNs, test-time views, `eval_step`). May import research.configs
only; no TensorFlow."""
