"""Is a transfer gain real? Paired statistics of two models on the same test samples, and the
spread of a gain over seeds.

- McNemar's exact test on the pairs (finetuned right/wrong, baseline right/wrong): only the
  samples where the two disagree count; under "no difference" each disagreement goes either way
  with probability 1/2, so the two-sided p-value is a binomial tail.
- For regression, a paired t-test on the per-sample differences of the errors.
- A bootstrap 95% interval of the gain: the test samples resampled with replacement (seeded, a
  fixed number of resamples, in chunks of bounded size), the metric recomputed on each resample
  for both models, the 2.5% and 97.5% quantiles of the differences.
- Over seeds: mean, sample standard deviation, a Student t interval and the share of seeds with a
  positive gain.

Pure torch and math (float64): no statistics library for a few formulas tested against hand
computations.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Optional, Sequence

import torch

RESAMPLES = 2000
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000  # resamples x samples held at once: about 32 MB of int64 indices
# metrics the bootstrap recomputes from per-sample decisions; others fall back to these
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
REGRESSION_METRICS = ("loss", "mse", "rmse", "mae")


# ---- distributions ------------------------------------------------------------------------
def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= min(k, n-k)) + P(X >= max(k, n-k)) for X ~ Binomial(n, 1/2), capped at 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(low + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (first right and second wrong;
    first wrong and second right)."""
    return binomial_two_sided(only_first, only_first + only_second)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile (p > 0.5) of Student's t, by bisection on the two-sided tail."""
    tail = 2 * (1 - p)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > tail else (low, mid)
    return (low + high) / 2


def paired_t_test(differences: torch.Tensor) -> float:
    """Two-sided p-value of a paired t-test that the mean difference is zero."""
    d = differences.double()
    n = len(d)
    if n < 2:
        return 1.0
    sd = d.std().item()
    mean = d.mean().item()
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return t_two_sided_p(mean / (sd / math.sqrt(n)), n - 1)


def t_interval(values: Sequence[float], level: float = LEVEL) -> Optional[tuple[float, float]]:
    """Student t interval of the mean of `values` (None with fewer than two)."""
    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def over_seeds(gains: Sequence[float], higher_is_better: bool) -> dict:
    """Mean, std, t interval and the share of seeds where the gain is positive (an improvement)."""
    interval = t_interval(gains)
    helped = [g > 0 if higher_is_better else g < 0 for g in gains]
    return {"mean": statistics.fmean(gains), "std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
            "interval": list(interval) if interval else None, "level": LEVEL, "seeds": len(gains),
            "share_positive": sum(helped) / len(gains)}


# ---- metrics on per-sample decisions ---------------------------------------------------------
def confusion_batched(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(R, N) predicted and true classes -> (R, C, C) confusion counts (rows: true class)."""
    rows = pred.shape[0]
    offset = torch.arange(rows, dtype=torch.long).unsqueeze(1) * num_classes * num_classes
    flat = (offset + target.long() * num_classes + pred.long()).reshape(-1)
    counts = torch.bincount(flat, minlength=rows * num_classes * num_classes)
    return counts.reshape(rows, num_classes, num_classes).double()


def classification_metric(name: str, confusion: torch.Tensor) -> torch.Tensor:
    """accuracy / balanced_accuracy (mean recall over classes present) / macro_f1 of (R, C, C)."""
    tp = torch.diagonal(confusion, dim1=1, dim2=2)
    support, predicted = confusion.sum(2), confusion.sum(1)
    if name == "accuracy":
        return tp.sum(1) / confusion.sum((1, 2))
    if name == "balanced_accuracy":
        present = support > 0
        recall = torch.where(present, tp / support.clamp(min=1), torch.zeros_like(tp))
        return recall.sum(1) / present.sum(1).clamp(min=1)
    if name == "macro_f1":
        denominator = support + predicted
        return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp)).mean(1)
    raise KeyError(name)


def regression_metric(name: str, errors: torch.Tensor) -> torch.Tensor:
    """loss (mean squared error) / mse / rmse / mae of (R, N) per-sample errors (pred - target)."""
    if name == "mae":
        return errors.abs().mean(1)
    mse = (errors * errors).mean(1)
    return mse.sqrt() if name == "rmse" else mse


# ---- the paired comparison -------------------------------------------------------------------
def bootstrap_interval(statistic: Callable[[torch.Tensor], torch.Tensor], n: int, resamples: int = RESAMPLES,
                       seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of `statistic(index)` over bootstrap resamples of n samples: `statistic`
    takes (R, N) indices and returns R values. Resamples are drawn in chunks of bounded size."""
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    values = []
    for start in range(0, resamples, chunk):
        index = torch.randint(n, (min(chunk, resamples - start), n), generator=generator)
        values.append(statistic(index).double())
    everything = torch.cat(values)
    alpha = (1 - level) / 2
    return torch.quantile(everything, alpha).item(), torch.quantile(everything, 1 - alpha).item()


def compare_classification(metric: str, ours: torch.Tensor, theirs: torch.Tensor, target: torch.Tensor,
                           num_classes: int, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Two models' predicted classes (N,) on the same samples: gain in `metric` (ours - theirs),
    its bootstrap interval and McNemar's exact test on correct/incorrect pairs."""
    metric = metric if metric in CLASSIFICATION_METRICS else "accuracy"
    ours_right, theirs_right = ours == target, theirs == target
    only_ours = int((ours_right & ~theirs_right).sum())
    only_theirs = int((~ours_right & theirs_right).sum())

    def gain(index: torch.Tensor) -> torch.Tensor:
        t = target[index]
        return (classification_metric(metric, confusion_batched(ours[index], t, num_classes))
                - classification_metric(metric, confusion_batched(theirs[index], t, num_classes)))

    whole = torch.arange(len(target)).unsqueeze(0)
    return {"metric": metric, "gain": gain(whole).item(),
            "interval": list(bootstrap_interval(gain, len(target), resamples, seed)), "level": LEVEL,
            "resamples": resamples, "seed": seed, "samples": len(target),
            "test": "mcnemar_exact", "p_value": mcnemar_exact(only_ours, only_theirs),
            "only_finetuned_right": only_ours, "only_baseline_right": only_theirs}


def compare_regression(metric: str, ours: torch.Tensor, theirs: torch.Tensor, target: torch.Tensor,
                       resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Two models' predicted values on the same samples: gain in `metric` (ours - theirs; lower
    is better), its bootstrap interval, and a paired t-test on the per-sample errors (absolute
    for mae, squared otherwise)."""
    metric = metric if metric in REGRESSION_METRICS else "mse"
    n = len(target)

    def magnitude(pred: torch.Tensor) -> torch.Tensor:
        """One error per sample, multi-output values averaged as the metric averages them: the
        mean absolute error for mae, the root mean squared error otherwise."""
        err = (pred.double() - target.double()).reshape(n, -1)
        return err.abs().mean(1) if metric == "mae" else err.pow(2).mean(1).sqrt()

    ours_err, theirs_err = magnitude(ours), magnitude(theirs)
    per_sample = ours_err - theirs_err if metric == "mae" else ours_err ** 2 - theirs_err ** 2

    def gain(index: torch.Tensor) -> torch.Tensor:
        return regression_metric(metric, ours_err[index]) - regression_metric(metric, theirs_err[index])

    whole = torch.arange(n).unsqueeze(0)
    return {"metric": metric, "gain": gain(whole).item(),
            "interval": list(bootstrap_interval(gain, n, resamples, seed)), "level": LEVEL,
            "resamples": resamples, "seed": seed, "samples": n,
            "test": "paired_t_" + ("absolute" if metric == "mae" else "squared") + "_errors",
            "p_value": paired_t_test(per_sample)}


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
