"""The stages, each one recipe that reads top to bottom: pretrain.py, finetune.py (with the
scratch baseline and seeds), evaluate.py, validate.py (build everything, train nothing). They share
the parts a stage is built from (parts.py, from the registries in components.py), the life of a run
directory (lifecycle.py) and training with its final report (common.py). The CLI imports a recipe
only when a command runs."""
