"""transfer: transfer learning from the command line.

The sub-packages follow the path a run takes: cli.py (the command) -> config/ (YAML to a validated
Experiment) -> recipes/ (one per stage: build the parts from data/ and models/, load weights/,
fit with train/, measure with eval/) -> runs/ (the run directory, checkpoints) -> report/; dist/
runs it in several processes and core/ holds what every layer shares. tests/test_layout.py keeps
the imports one way.
"""

__version__ = "0.1.0"
