"""Measuring a model on a split: the Evaluator (evaluation.py), the metric registry METRICS
(metrics.py; lean_torchmetrics.py makes only the parts of torchmetrics in use load), the confusion
matrix, per-class figures and reliability of the final report (breakdown.py), and
`--predictions` CSV files (predictions.py). Import the modules themselves: they import torch and
torchmetrics."""
