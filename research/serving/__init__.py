"""What serving needs, and all the web imports of research (with research.configs for titles):

    artifacts     every file name of a model directory (card, report, calibration, examples)
    record        ServingRecord: class names, shape, statistics, views, temperature, threshold
    model_dir     reads model directories and picks checkpoints (no JAX)
    preprocess    an uploaded image to the model's input (Pillow and NumPy only)
    classifier    Classifier: the jitted forward pass on a model directory
    batching      BATCH_BUCKETS and the micro-batcher (no JAX)
    calibration   temperature scaling, ECE, and the "unknown" scores
    expectations  how an image differs from what the model expects (NumPy only)
    saliency      which pixels drove an answer
    errors        the exceptions every package raises

May import research.configs and research.nets; never TensorFlow, research.data, research.train
or research.evaluation. This package's `__init__` imports nothing, so reading a constant costs
no JAX start-up.
"""
