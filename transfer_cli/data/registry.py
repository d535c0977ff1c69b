from transfer_cli.registry import Registry

DATASETS: Registry = Registry("dataset")
