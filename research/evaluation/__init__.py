"""Measuring a trained model and writing what ships with it: `metrics` (accuracy, confusion and
calibration on a split or an image folder), `calibrate` (fitting the temperature and the
"unknown" threshold on a validation split), `robustness` (accuracy under corruptions), `report`
(the model report and training curves), `export` (a model directory and its card), `examples`
(the example images a model page shows) and `plots`.

May import research.data, research.serving, research.nets and research.configs; never
research.train.
"""
