"""The weights a model starts from: find and read weights files safely (files.py), map their keys
onto the model's (keymap.py), and load them with the head decision and a report of what was loaded
(load.py). LoRA adapters live with the models (models/lora.py)."""
