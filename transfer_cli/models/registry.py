from transfer_cli.core.registry import Registry

MODELS: Registry = Registry("model")
