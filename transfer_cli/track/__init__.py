"""Experiment trackers (`log:` in the config): what metrics.jsonl and the report hold, also written
to TensorBoard event files in the run directory and to an MLflow tracking store the user names.
sinks.py has one class per tracker; tracking.py runs them off the training step, on rank 0, and
turns any failure of theirs into one warning. Each tracker is an optional extra."""
