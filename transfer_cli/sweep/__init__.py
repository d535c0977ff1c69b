"""Hyperparameter sweeps over a base config (transfer sweep)."""
