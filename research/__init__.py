"""JAX/Flax research code: training, evaluation, and the serving library the web imports.

Packages hold libraries, sorted by role; lower ones never import higher ones (import-linter
checks it: `[tool.importlinter]` in pyproject.toml, docs/architecture.md):

    train       the training step, state, loop, optimizer, checkpoints, several processes
    evaluation  measuring a trained model, fitting its calibration, its report, card and export
    data        reading datasets (tfds, image folders, idx), the two input modes, augmentation
    serving     what the web imports: Classifier, preprocessing, records, model directories
    nets        layers and networks, and the evaluation step
    configs     Config, recipes and dataset specs (no JAX, no TensorFlow)

The modules at this level (evaluate, calibrate, robustness, model_report, export, examples,
predict) and `train/__main__.py`, `data/__main__.py` are the commands, `python -m
research.<name>`: argument parsing over the libraries. Nothing imports a command.
"""
