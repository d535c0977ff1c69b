"""Tiny random Hugging Face models of every supported kind, written with save_pretrained into a
folder (no download), so the real loading code runs. Needs the optional extra [hf]."""

from __future__ import annotations

from pathlib import Path

import torch

VISION = ("vit", "deit", "beit", "dinov2", "convnext", "resnet", "swin")
DECODERS = ("gpt2", "llama", "qwen2")
IMAGE = 16  # side of the images the tiny vision models take


def config(kind: str, vocab: int = 64):  # noqa: ANN201  a transformers config
    import transformers as T

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return {
        "bert": lambda: T.BertConfig(vocab_size=vocab, max_position_embeddings=32, **small),
        "vit": lambda: T.ViTConfig(image_size=IMAGE, patch_size=4, **small),
        "deit": lambda: T.DeiTConfig(image_size=IMAGE, patch_size=4, **small),
        "beit": lambda: T.BeitConfig(image_size=IMAGE, patch_size=4, vocab_size=32, **small),
        "dinov2": lambda: T.Dinov2Config(image_size=IMAGE, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2),
        "convnext": lambda: T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2),
        "resnet": lambda: T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic"),
        "swin": lambda: T.SwinConfig(image_size=IMAGE, patch_size=2, embed_dim=8, depths=[1, 2], num_heads=[1, 2],
                                     window_size=2),
        "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=vocab, n_positions=32),
        "llama": lambda: T.LlamaConfig(vocab_size=vocab, max_position_embeddings=32, num_key_value_heads=1, **small),
        "qwen2": lambda: T.Qwen2Config(vocab_size=vocab, max_position_embeddings=32, num_key_value_heads=1, **small),
    }[kind]()


def save_model(folder: Path, kind: str, vocab: int = 64, seed: int = 0) -> Path:
    """A randomly initialised model of `kind` (seeded), saved as folder/config.json + weights."""
    import transformers as T

    T.logging.set_verbosity_error()
    torch.manual_seed(seed)
    T.AutoModel.from_config(config(kind, vocab)).save_pretrained(folder)
    return folder
