"""Datasets to arrays and batches: tfds reading and preparation (`datasets`), importers of idx
files and image folders (`importers`, `folders`), NumPy splits (`arrays`), the two input modes
(`pipeline`: tf.data on the host; `device_input`: the split on the accelerator, augmented in
the step), augmentation (`augment`), corruptions (`corruptions`) and what a run reads
(`sources`). `__main__` is the `python -m research.data` command.

May import research.configs, research.serving (errors) and research.nets; TensorFlow only in
`datasets`, `importers` and `pipeline`, each imported lazily by the modules that run without it.
"""
