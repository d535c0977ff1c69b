from transfer_cli.registry import Registry

MODELS: Registry = Registry("model")
