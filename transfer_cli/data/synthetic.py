"""Built-in procedurally generated source/target task pair ("motif world").

A *world* is a fixed set of short, smooth random patterns ("motifs": 1-D
segments or 2-D patches), fixed entirely by ``world_seed`` (plus the shape
arguments): ``n_motifs`` *class* motifs (indices ``0..n_motifs-1``) and
``n_clutter`` *clutter* motifs (the following indices) that are never a class.
Motifs are chosen to be as distinct as possible up to shifts. Samples are
drawn from the world with a separate data ``seed``:

* background = white noise (std ``noise``) + a smooth low-frequency drift
  (std ``0.5 * noise``);
* the sample's motifs pasted at random, non-overlapping positions, each with a
  random amplitude in [0.8, 1.5] (1-D motifs are also randomly stretched by
  0.8x-1.25x, so detectors must be scale tolerant).

Tasks (same world, so features transfer; new classes, so the head is new):

* ``"source"``: ``n_motifs`` classes, class ``k`` = "class motif ``k`` is
  present", plus ``n_distractors`` (default 1) clutter motifs to ignore.
  Names ``"motif-k"``.
* ``"target"``: 5 classes, each a *pair* of motifs in a cycle over motifs
  0..4: (0,1), (1,2), (2,3), (3,4), (4,0), plus ``n_distractors`` (default 1)
  distractors drawn from the remaining class motifs 5.. and the clutter.
  Every motif belongs to two classes, so a class is only identified by
  detecting *both* of its motifs while ignoring motifs that *were* source
  classes. Names ``"motif-0+motif-1"`` etc.

A network pretrained on the source already has the motif detectors, so the
10-shot target is easy for it; from scratch, 50 examples are not enough to
learn the detectors (``scripts/check_builtin_task.py`` measures this).

Pure numpy (float64 internally), returned as float32 ``x`` / int64 ``y``
tensors; identical arguments give bit-identical tensors.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["make_motif_task", "make_world", "TARGET_PAIRS", "DEFAULT_LENGTH", "DEFAULT_MOTIF_WIDTH"]

#: Default ``length`` (L for 1-D, H=W for 2-D) per ``dims``.
DEFAULT_LENGTH: dict[int, int] = {1: 160, 2: 16}
#: Default motif width (1-D segment length / 2-D patch side) per ``dims``.
DEFAULT_MOTIF_WIDTH: dict[int, int] = {1: 15, 2: 5}
#: Target classes: pairs of motif indices (a cycle over motifs 0..4).
TARGET_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3), (3, 4), (4, 0))

_AMP_RANGE = (0.8, 1.5)
_STRETCH_RANGE = (0.8, 1.25)  # 1-D only
_DRIFT_FRACTION = 0.5
_TASK_IDS = {"source": 1, "target": 2}
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}


def _smooth_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _smooth1d(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along ``axis`` with reflect padding (pure numpy).

    Computed a block of samples (the first axis) at a time, so that the kernel's passes over a
    block stay in the CPU cache; every element is the same sum in the same order either way."""
    if axis % a.ndim == 0 or len(a) <= 1:
        return _smooth1d_block(a, sigma, axis)
    rows = max(1, _SMOOTH_BLOCK // (a[0].size or 1))
    out = np.empty_like(a)
    for start in range(0, len(a), rows):
        out[start : start + rows] = _smooth1d_block(a[start : start + rows], sigma, axis)
    return out


_SMOOTH_BLOCK = 1 << 15  # elements per block of samples (256 KiB of float64)


def _smooth1d_block(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    k = _smooth_kernel(sigma)
    r = len(k) // 2
    a = np.moveaxis(a, axis, -1)
    pad = [(0, 0)] * (a.ndim - 1) + [(r, r)]
    p = np.pad(a, pad, mode="reflect" if a.shape[-1] > r else "edge")
    out = np.zeros_like(a)
    term = np.empty_like(out)
    n = a.shape[-1]
    for i, w in enumerate(k):
        np.multiply(p[..., i : i + n], w, out=term)
        out += term
    return np.moveaxis(out, -1, axis)


def _xcorr_similarity(pool: np.ndarray, m: np.ndarray, dims: int) -> np.ndarray:
    """Max over all relative shifts of |normalised cross-correlation| of each pool item with m."""
    axes = tuple(range(-dims, 0))
    size = tuple(2 * s for s in m.shape[-dims:])
    fp = np.fft.rfftn(pool, s=size, axes=axes)
    fm = np.fft.rfftn(m, s=size, axes=axes)
    xc = np.fft.irfftn(fp * np.conj(fm), s=size, axes=axes).sum(axis=1)  # sum over channels
    norms = np.sqrt((pool ** 2).sum(axis=tuple(range(1, pool.ndim)))) * np.sqrt((m ** 2).sum())
    return np.abs(xc).reshape(len(pool), -1).max(axis=1) / norms


def make_world(
    *, dims: int = 1, n_motifs: int = 10, channels: int = 1, motif_width: int | None = None,
    world_seed: int = 0,
) -> np.ndarray:
    """Return the world's motifs, shape (n_motifs, C, w) or (n_motifs, C, w, w).

    Motifs are smoothed Gaussian noise under a Hann taper, with the mean
    removed, scaled to unit peak magnitude. They are picked greedily from a
    pool of random candidates so that they are as distinct as possible even
    up to shifts (max-over-shifts normalised cross-correlation is minimised),
    since a convolutional net with global pooling is shift invariant.
    Depends only on the arguments.
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    if n_motifs < 1:
        raise ValueError(f"n_motifs must be >= 1, got {n_motifs}")
    w = DEFAULT_MOTIF_WIDTH[dims] if motif_width is None else int(motif_width)
    if w < 3:
        raise ValueError(f"motif_width must be >= 3, got {w}")
    if int(world_seed) < 0:
        raise ValueError(f"world_seed must be >= 0, got {world_seed}")
    rng = np.random.default_rng(np.random.SeedSequence([int(world_seed), 7919, dims, channels, w]))
    taper1 = np.hanning(w + 2)[1:-1]
    taper = taper1 if dims == 1 else np.outer(taper1, taper1)
    n_pool = max(256, 16 * n_motifs)
    pool = rng.standard_normal((n_pool, channels) + (w,) * dims)
    for ax in range(2, 2 + dims):
        pool = _smooth1d(pool, max(0.7, w / 10.0), axis=ax)
    pool = pool * taper
    axes = tuple(range(2, 2 + dims))
    # remove the mean under the taper so motifs carry no DC offset
    pool = pool - (pool.sum(axis=axes, keepdims=True) / taper.sum()) * taper
    pool = pool / np.abs(pool).reshape(n_pool, -1).max(axis=1).reshape((n_pool,) + (1,) * (pool.ndim - 1))
    chosen = [0]
    worst = _xcorr_similarity(pool, pool[0], dims)
    worst[0] = np.inf
    while len(chosen) < n_motifs:
        j = int(np.argmin(worst))
        chosen.append(j)
        worst = np.maximum(worst, _xcorr_similarity(pool, pool[j], dims))
        worst[chosen] = np.inf
    return pool[chosen]


def _background(rng: np.random.Generator, n: int, channels: int, dims: int, length: int,
                noise: float) -> np.ndarray:
    shape = (n, channels) + (length,) * dims
    x = noise * rng.standard_normal(shape)
    drift = rng.standard_normal(shape)
    for ax in range(2, 2 + dims):
        drift = _smooth1d(drift, length / 8.0, axis=ax)
    drift /= drift.std(axis=tuple(range(2, 2 + dims)), keepdims=True) + 1e-12
    return x + _DRIFT_FRACTION * noise * drift


def _stretch(m: np.ndarray, nw: int) -> np.ndarray:
    """Resample a (C, w) motif to width nw by linear interpolation."""
    w = m.shape[-1]
    src = np.linspace(0.0, w - 1.0, nw)
    return np.stack([np.interp(src, np.arange(w), c) for c in m])


def _place(rng: np.random.Generator, sizes: list[int], length: int, dims: int) -> list[tuple[int, ...]]:
    """Random start corners for boxes of the given sides, non-overlapping, in the given order.

    1-D: uniform over all non-overlapping layouts with that left-to-right
    order (a random composition of the free space into gaps), so it never
    fails when ``sum(sizes) <= length``. 2-D: rejection sampling, falling back
    to random cells of a coarse grid (always feasible when the grid has room).
    """
    if dims == 1:
        k = len(sizes)
        free = length - sum(sizes)
        # gap before box j: the j-th smallest of k distinct draws, minus j; then the boxes before it
        bars = sorted(rng.choice(free + k, size=k, replace=False).tolist())
        corners, offset = [], 0
        for j, (bar, size) in enumerate(zip(bars, sizes)):
            corners.append((bar - j + offset,))
            offset += size
        return corners
    for _ in range(1000):
        corners: list[tuple[int, ...]] = []
        ok = True
        for s in sizes:
            c = tuple(int(rng.integers(0, length - s + 1)) for _ in range(dims))
            for c2, s2 in zip(corners, sizes):
                if all(a < b + s2 and b < a + s for a, b in zip(c, c2)):
                    ok = False
                    break
            if not ok:
                break
            corners.append(c)
        if ok:
            return corners
    cell = max(sizes)
    per_side = length // cell
    cells = rng.choice(per_side**dims, size=len(sizes), replace=False)
    out = []
    for c, s in zip(cells, sizes):
        idx = np.unravel_index(int(c), (per_side,) * dims)
        out.append(tuple(int(i * cell + rng.integers(0, cell - s + 1)) for i in idx))
    return out


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n labels over k classes, counts differ by at most one (random classes get the extras), shuffled."""
    extra = rng.choice(k, n % k, replace=False)
    return rng.permutation(np.concatenate([np.repeat(np.arange(k), n // k), extra]))


def _make_split(rng: np.random.Generator, world: np.ndarray, combos: list[tuple[int, ...]], n: int,
                dims: int, length: int, noise: float, distractor_pool: list[int], n_distractors: int,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    channels = world.shape[1]
    y = _balanced_labels(rng, n, len(combos))
    x = _background(rng, n, channels, dims, length, noise)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for i in range(n):
        ids = list(combos[int(y[i])])
        if n_distractors:
            ids += [distractor_pool[j] for j in rng.choice(len(distractor_pool), n_distractors, replace=False)]
        ms = []
        for mi in ids:
            m = world[mi]
            if dims == 1:
                nw = max(3, int(round(m.shape[-1] * rng.uniform(*_STRETCH_RANGE))))
                if (mi, nw) not in cache:
                    cache[(mi, nw)] = _stretch(m, nw)
                m = cache[(mi, nw)]
            ms.append(m * rng.uniform(*_AMP_RANGE))
        order = rng.permutation(len(ms))  # random left/right (top/bottom) order
        ms = [ms[j] for j in order]
        corners = _place(rng, [m.shape[-1] for m in ms], length, dims)
        for m, c in zip(ms, corners):
            s = m.shape[-1]
            if dims == 1:
                x[i, :, c[0] : c[0] + s] += m
            else:
                x[i, :, c[0] : c[0] + s, c[1] : c[1] + s] += m
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def make_motif_task(
    task: str,
    *,
    dims: int = 1,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    world_seed: int = 0,
    noise: float = 0.15,
    length: int | None = None,
    channels: int = 1,
    n_motifs: int = 10,
    n_clutter: int = 4,
    n_distractors: int | None = None,
    motif_width: int | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Build the built-in "motif world" source or target task.

    ``task``: ``"source"`` (``n_motifs`` classes: which class motif is present)
    or ``"target"`` (5 classes: which cyclic pair of motifs 0..4 is present).
    ``dims=1`` gives x of shape (N, C, L); ``dims=2`` gives (N, C, H, W) with
    H = W = ``length``. ``length`` defaults to 160 (1-D) / 16 (2-D),
    ``motif_width`` to 15 (1-D) / 5 (2-D). ``world_seed`` fixes the motifs
    (share it between source and target); ``seed`` draws the samples, and
    train/val/test use independent sub-seeds. ``n_distractors`` extra
    non-class motifs per sample (default 1; source: clutter motifs, target:
    motifs 5.. and clutter). Labels are balanced (per-class counts differ by
    at most one) and shuffled.

    Returns ``({"train": (x, y), "val": (x, y), "test": (x, y)}, class_names)``
    with float32 x and int64 y.
    """
    if task not in _TASK_IDS:
        raise ValueError(f"task must be 'source' or 'target', got {task!r}")
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(n) < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    for name, v in (("seed", seed), ("world_seed", world_seed)):
        if int(v) < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if n_clutter < 0:
        raise ValueError(f"n_clutter must be >= 0, got {n_clutter}")
    length = DEFAULT_LENGTH[dims] if length is None else int(length)
    if task == "target":
        need = 1 + max(max(p) for p in TARGET_PAIRS)
        if n_motifs < need:
            raise ValueError(f"the target task needs n_motifs >= {need}, got {n_motifs}")
        combos: list[tuple[int, ...]] = [tuple(p) for p in TARGET_PAIRS]
    else:
        if n_motifs < 2:
            raise ValueError(f"n_motifs must be >= 2, got {n_motifs}")
        combos = [(k,) for k in range(n_motifs)]
    used = {i for c in combos for i in c}
    pool = [i for i in range(n_motifs + n_clutter) if i not in used]
    if n_distractors is None:
        n_distractors = min(1, len(pool))
    if not 0 <= n_distractors <= len(pool):
        raise ValueError(f"n_distractors must be in [0, {len(pool)}] for this task, got {n_distractors}")
    world = make_world(dims=dims, n_motifs=n_motifs + n_clutter, channels=channels,
                       motif_width=motif_width, world_seed=world_seed)
    w = world.shape[-1]
    per_sample = max(len(c) for c in combos) + n_distractors
    w_max = int(round(w * _STRETCH_RANGE[1])) if dims == 1 else w
    # every sample's motifs must fit side by side without overlapping
    if (dims == 1 and length < per_sample * w_max) or (dims == 2 and (length // w) ** 2 < per_sample):
        raise ValueError(f"length {length} is too small to hold {per_sample} motifs of width {w}")

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        ss = np.random.SeedSequence([int(seed), int(world_seed), _TASK_IDS[task], _SPLIT_IDS[split],
                                     dims, length, channels, n_motifs, n_clutter, n_distractors])
        splits[split] = _make_split(np.random.default_rng(ss), world, combos, int(n), dims, length,
                                    float(noise), pool, int(n_distractors))
    names = ["+".join(f"motif-{i}" for i in c) for c in combos]
    return splits, names
