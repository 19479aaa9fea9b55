"""Training: `steps` (loss_fn, train_step, device_train_step, Stepper, evaluate_model), `state`
(TrainState, create_train_state), `loop` (train_and_evaluate), `optim`, `checkpoints` and
`distributed` (several processes). `__main__` is `python -m research.train`.

May import every library package below it (research.evaluation, research.data,
research.serving, research.nets, research.configs).
"""
