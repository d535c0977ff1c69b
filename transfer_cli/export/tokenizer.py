"""The run's tokenizer, copied into the export folder as one `tokenizer.json` (with the run's
truncation and padding to max_length built in), so the folder needs nothing from the training
machine. A model directory without tokenizer.json is converted the way text_csv reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transfer_cli.data.text import load_tokenizer

FILE = "tokenizer.json"


def copy_tokenizer(spec: dict, folder: Path) -> Any:
    """Write folder/tokenizer.json from the tokenizer the preprocessing names; point the spec at it
    (the source path stays as `tokenizer_source`). Returns the tokenizers.Tokenizer."""
    text = spec["text"]
    # the run's padding token, not a fresh guess: a pad_token the config chose (or a decoder's
    # end-of-text token) must pad the exported tokenizer as it padded the training texts
    tokenizer = load_tokenizer(Path(text["tokenizer"]), int(text["max_length"]), text.get("pad_token"))
    tokenizer.save(str(folder / FILE))
    text["tokenizer_source"], text["tokenizer"] = text["tokenizer"], FILE
    return tokenizer
