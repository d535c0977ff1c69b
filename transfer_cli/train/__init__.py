"""Fitting: Trainer puts one training run together (trainer.py) and drives the loop (engine.py)
with its callbacks (callbacks.py); the transfer strategy as phases (strategies.py); the registries
of optimizers (optim.py), schedules (schedules.py) and losses (losses.py); compile/channels_last/
DDP wrapping (acceleration.py); the frozen-backbone feature cache (features.py); seeding and RNG
state (seeding.py); exact resume from a run's last checkpoint (resume.py). Import the modules
themselves: they import torch."""
