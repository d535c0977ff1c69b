from transfer_cli.core.registry import Registry

DATASETS: Registry = Registry("dataset")
