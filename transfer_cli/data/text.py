"""The `text_csv` data source: a text column and a label column, tokenized once with a local
tokenizer (a `tokenizer.json`, or the tokenizer of a local Hugging Face model directory).

Each sample is a (2, max_length) int64 tensor: token ids and attention mask, padded and truncated
to max_length, held in memory and batched by indexing like any tensor data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from pydantic import Field

from transfer_cli.core.errors import ConfigError, DataError
from transfer_cli.data.bundle import DataBundle, TensorSplit
from transfer_cli.data.registry import DATASETS
from transfer_cli.data.splitting import DataPath, carve_splits, split_info
from transfer_cli.data.tabular import Table, TableParams, read_table, require_columns, table_targets
from transfer_cli.runs.provenance import sha256_of

PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>", "<|endoftext|>")
# a decoder-only model's tokenizer often has no padding token: its end-of-text token pads instead
# (harmless: padding is masked, and the last non-padding token is pooled)
EOS_TOKENS = ("</s>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>", "<eos>")
# what transformers builds a fast tokenizer from when a model directory has no tokenizer.json
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
                   "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


class TextCsvParams(TableParams):
    text: str = Field(..., description="the text column")
    tokenizer: DataPath = Field(..., description="a tokenizer.json file, or a local Hugging Face model directory")
    max_length: int = Field(128, ge=2, description="tokens per text: longer texts are truncated, shorter ones padded")
    pad_token: Optional[str] = Field(None, description="the padding token; default: the tokenizer's own, else the "
                                                       "first of its known padding or end-of-text tokens (recorded)")
    tokenizer_sha256: Optional[str] = Field(None, description="recorded at training: the sha256 of the tokenizer's "
                                                              "files; a later stage refuses a tokenizer that differs")
    fitted_keys: ClassVar[tuple[str, ...]] = ("classes", "pad_token", "tokenizer_sha256")


@DATASETS.register("text_csv", params=TextCsvParams)
def text_csv(params: TextCsvParams, *, seed: int) -> DataBundle:
    """Texts and labels from CSV files, tokenized with a local tokenizer into (2, max_length) ids + mask."""
    tables = {split: read_table(path, params.key_of(split), params.delimiter)
              for split, path in params.sources().items()}
    targets = table_targets(tables, params)
    tokenizer = load_tokenizer(Path(params.tokenizer), params.max_length, params.pad_token)
    fingerprint = check_tokenizer(params)
    given, truncated = {}, 0
    for split, table in tables.items():
        x, cut = tokenize(tokenizer, table.column(params.text, "text"), params.max_length)
        given[split] = TensorSplit(x, targets.y[split])
        truncated += cut
    splits = carve_splits(given, params, targets.strata, tables[params.reference()].where)
    return DataBundle(
        splits=splits, task=targets.task, num_outputs=targets.num_outputs, class_names=targets.class_names,
        info={"source": f"text csv {', '.join(params.sources().values())}", "tokenizer": params.tokenizer,
              "pad_token": tokenizer.padding["pad_token"],
              "vocab_size": tokenizer.get_vocab_size(), "truncated_texts": truncated,
              **split_info(params, {name: len(s) for name, s in splits.items()}, targets.strata is not None)},
        fitted={"pad_token": tokenizer.padding["pad_token"], "tokenizer_sha256": fingerprint,
                **({"classes": targets.class_names} if targets.class_names else {})},
    )


def text_inputs(params: TextCsvParams, path: str, key: str) -> tuple[Table, torch.Tensor]:
    """Unlabelled texts tokenized as in training: the run's tokenizer and max_length."""
    table = read_table(path, key, params.delimiter)
    require_columns(table, [params.text], "text")
    tokenizer = load_tokenizer(Path(params.tokenizer), params.max_length, params.pad_token)
    check_tokenizer(params)
    return table, tokenize(tokenizer, table.column(params.text, "text"), params.max_length)[0]


def load_tokenizer(path: Path, max_length: int, pad_token: Optional[str] = None) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a model directory holding one."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError(["data.name: text_csv needs the optional package 'tokenizers': "
                           "pip install -e \".[hf]\""]) from None
    file = path / "tokenizer.json" if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        tokenizer = _converted(path)
    elif not file.is_file():
        raise DataError(f"data.params.tokenizer: file not found: {path} (a tokenizer.json file or a local model "
                        f"directory; relative paths are resolved against the working directory)")
    else:
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # noqa: BLE001  the tokenizers library raises its own exception types
            raise DataError(f"data.params.tokenizer: cannot read {file} as a tokenizers JSON file ({exc})") from None
    pad_id, pad_token = _padding(tokenizer, file, pad_token)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def tokenizer_sha256(path: Path) -> str:
    """The sha256 of what the tokenizer is read from: the tokenizer.json file, or (a model directory
    without one) the files transformers builds it from, with their names."""
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        return sha256_of(file)
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            digest.update(f"{name}:{sha256_of(path / name)}\n".encode())
    return digest.hexdigest()


def check_tokenizer(params: TextCsvParams) -> str:
    """The tokenizer's sha256, refused when the run recorded another: a changed tokenizer maps texts
    to ids the model never learned, silently."""
    now = tokenizer_sha256(Path(params.tokenizer))
    recorded = params.tokenizer_sha256
    if recorded is not None and recorded != now:
        raise DataError(f"data.params.tokenizer: {params.tokenizer} is not the tokenizer the run was trained with "
                        f"(sha256 {recorded[:12]}... recorded in the run's config.yaml, {now[:12]}... now); restore "
                        f"that tokenizer, or fine-tune again with this one")
    return now


def _converted(directory: Path) -> Any:
    """The fast tokenizer that transformers builds from a model directory without tokenizer.json
    (vocab.txt, sentencepiece model, ...), read from local files only."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(f"data.params.tokenizer: {directory} has no tokenizer.json; building its tokenizer from "
                        f"other files needs the optional package 'transformers': pip install -e \".[hf]\"") from None
    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True).backend_tokenizer
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()
        raise DataError(f"data.params.tokenizer: cannot load a tokenizer from {directory} "
                        f"({first[0] if first else type(exc).__name__})") from None


def _padding(tokenizer: Any, file: Path, given: Optional[str]) -> tuple[int, str]:
    if given is not None:
        token_id = tokenizer.token_to_id(given)
        if token_id is None:
            raise DataError(f"data.params.pad_token: {given!r} is not a token of {file}; remove it to use the "
                            f"tokenizer's own padding")
        return token_id, given
    if tokenizer.padding:
        return tokenizer.padding["pad_id"], tokenizer.padding["pad_token"]
    for token in PAD_TOKENS + EOS_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id, token
    raise DataError(f"data.params.tokenizer: {file} defines no padding token (none of "
                    f"{', '.join(PAD_TOKENS + EOS_TOKENS)}); set data.params.pad_token to one of its tokens")


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, int]:
    """(N, 2, max_length) ids and attention mask, and how many texts were truncated."""
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64).reshape(len(texts), max_length)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64).reshape(len(texts), max_length)
    truncated = sum(1 for e in encodings if e.overflowing)
    return torch.stack([ids, mask], dim=1), truncated
