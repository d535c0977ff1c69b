"""Transferability estimators: how well a candidate's features (and source head) suit a target
task, computed from one pass over the target's training data, without training.

- LogME (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model on the
  features, per target column (one-hot classes, or each regression target), maximised over
  its prior/noise precisions by the paper's fixed-point iteration on the eigendecomposition of
  F^T F; the mean over columns (those not all zero), per sample.
- H-score with shrinkage (Bao et al. 2019; Ibrahim et al., ICLR 2022): tr(cov_f^-1 cov_g), with
  cov_f the Ledoit-Wolf shrunk feature covariance and cov_g the covariance of the class means.
- NCE (Tran et al., ICCV 2019): -H(Y | Z), Z the source head's argmax on each target sample.
- LEEP (Nguyen et al., ICML 2020): the mean log-likelihood of the "expected empirical
  predictor" sum_z theta(x)_z P(y | z) built from the source head's softmax theta.

Everything is float64. Features are streamed into sufficient statistics (`FeatureStatistics`):
memory is O(d^2 + d K) whatever the number of samples, except LEEP, which needs two passes and
keeps the source head's probabilities (n x source classes, small beside the features).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

LOGME_ITERATIONS = 11  # the paper's code: converges in 2-3 steps, never needs more than 10
LOGME_TOLERANCE = 0.01  # relative change of alpha/beta that ends the iteration
LOGME_EPSILON = 1e-5  # keeps the precisions finite when a residual or the weights vanish


def target_matrix(task: str, y: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """The columns LogME scores, (n, K) float64: one-hot classes for multiclass and binary
    targets, each label of a multilabel target, each regression target."""
    if task == "multiclass":
        return torch.nn.functional.one_hot(y.long(), num_outputs).double()
    if task == "binary":
        return torch.nn.functional.one_hot(y.long().reshape(-1), 2).double()
    y = y.double()
    return y.reshape(len(y), -1)


def class_labels(task: str, y: torch.Tensor) -> Optional[torch.Tensor]:
    """Single-label class indices (what H-score, NCE and LEEP need), or None."""
    if task in ("multiclass", "binary"):
        return y.long().reshape(-1)
    return None


class FeatureStatistics:
    """Sufficient statistics of features F (n x d), LogME targets Y (n x K), class labels and the
    source head's argmax, accumulated batch by batch.

    Sums are taken around a shift (the first batch's mean), so that the centred moments H-score
    needs do not lose their digits to cancellation when the features have a large mean."""

    def __init__(self, dim: int, num_targets: int, num_classes: Optional[int] = None,
                 source_classes: Optional[int] = None) -> None:
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.dim, self.n = dim, 0
        self.shift: Optional[torch.Tensor] = None
        self.sum, self.gram = zeros(dim), zeros(dim, dim)  # of (x - shift)
        self.sum_sq_x, self.sum_sq2 = zeros(dim), 0.0  # sum ||x-s||^2 (x-s), sum ||x-s||^4
        self.fty, self.y_sum, self.y_sq = zeros(dim, num_targets), zeros(num_targets), zeros(num_targets)
        self.num_classes = num_classes
        self.class_count = zeros(num_classes) if num_classes else None
        self.class_sum = zeros(num_classes, dim) if num_classes else None  # of (x - shift)
        self.joint = zeros(source_classes, num_classes) if source_classes and num_classes else None
        self.source_probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, features: torch.Tensor, targets: torch.Tensor, labels: Optional[torch.Tensor] = None,
               source_probs: Optional[torch.Tensor] = None) -> None:
        f = features.detach().to("cpu", torch.float64).reshape(len(features), -1)
        y = targets.detach().to("cpu", torch.float64)
        if self.shift is None:
            self.shift = f.mean(0)
        x = f - self.shift
        sq = (x * x).sum(1)
        self.n += len(x)
        self.sum += x.sum(0)
        self.gram += x.T @ x
        self.sum_sq_x += sq @ x
        self.sum_sq2 += float((sq * sq).sum())
        self.fty += x.T @ y
        self.y_sum += y.sum(0)
        self.y_sq += (y * y).sum(0)
        if labels is not None and self.class_count is not None and self.class_sum is not None:
            labels = labels.detach().cpu().long()
            self.class_count += torch.bincount(labels, minlength=self.num_classes).double()
            self.class_sum.index_add_(0, labels, x)
            self.labels.append(labels)
            if source_probs is not None and self.joint is not None:
                probs = source_probs.detach().to("cpu", torch.float64)
                self.joint.index_put_((probs.argmax(1), labels), torch.ones(len(labels), dtype=torch.float64),
                                      accumulate=True)
                self.source_probs.append(probs)

    # ---- the raw (unshifted) moments LogME uses -----------------------------------------------
    def raw_gram(self) -> torch.Tensor:
        s, total = self._shift(), self.sum
        return self.gram + torch.outer(s, total) + torch.outer(total, s) + self.n * torch.outer(s, s)

    def raw_fty(self) -> torch.Tensor:
        return self.fty + torch.outer(self._shift(), self.y_sum)

    def _shift(self) -> torch.Tensor:
        return self.shift if self.shift is not None else torch.zeros(self.dim, dtype=torch.float64)

    # ---- scores --------------------------------------------------------------------------------
    def logme(self) -> float:
        return logme_from_statistics(self.raw_gram(), self.raw_fty(), self.y_sq, self.n)

    def hscore(self) -> float:
        if self.class_count is None or self.class_sum is None:
            raise ValueError("H-score needs class labels")
        return shrunk_hscore_from_statistics(self.n, self.sum, self.gram, self.sum_sq_x, self.sum_sq2,
                                             self.class_count, self.class_sum)

    def nce(self) -> float:
        if self.joint is None:
            raise ValueError("NCE needs class labels and the source head's predictions")
        return nce_from_joint(self.joint)

    def leep(self) -> float:
        if not self.source_probs:
            raise ValueError("LEEP needs class labels and the source head's predictions")
        return leep(torch.cat(self.source_probs), torch.cat(self.labels), self.num_classes)


# ---- LogME -------------------------------------------------------------------------------------
def logme_from_statistics(gram: torch.Tensor, fty: torch.Tensor, y_sq: torch.Tensor, n: int) -> float:
    """LogME from F^T F (d x d), F^T Y (d x K), the column sums of Y^2 (K) and n: the mean over
    the K columns of the maximised log evidence per sample.

    An all-zero column (a class or label with no sample in the data) is left out: y = 0 is fitted
    exactly by w = 0, so its evidence grows with the precisions up to the epsilon's cap (a large
    positive number that depends on the features) and would swamp the columns that say something."""
    eigenvalues, vectors = torch.linalg.eigh(gram.double())
    s = eigenvalues.clamp_min(0.0)  # F^T F is PSD; rounding can make its smallest eigenvalues negative
    projected = vectors.T @ fty.double()  # V^T F^T y for every column
    columns = [k for k in range(fty.shape[1]) if float(y_sq[k]) > 0.0]
    if not columns:
        raise ValueError("LogME needs a target column that is not all zero")
    evidences = [_column_evidence(s, projected[:, k], float(y_sq[k]), n) for k in columns]
    return sum(evidences) / len(evidences)


def _column_evidence(s: torch.Tensor, projected: torch.Tensor, y_sq: float, n: int) -> float:
    """The fixed point of the evidence over (alpha, beta) for one target column (the paper's
    Algorithm 1), in the eigenbasis of F^T F, where the posterior mean is m = V z with
    z = beta V^T F^T y / (alpha + beta s) and the residual ||y - F m||^2 follows from the
    statistics: y^T y - 2 z . V^T F^T y + sum s z^2."""
    d = len(s)
    alpha, beta, lam = 1.0, 1.0, 1.0
    for _ in range(LOGME_ITERATIONS):
        gamma = float((s / (s + lam)).sum())
        z = projected * beta / (alpha + beta * s)
        alpha_de = float((z * z).sum())  # ||m||^2: V is orthonormal
        alpha = gamma / (alpha_de + LOGME_EPSILON)
        beta_de = max(y_sq - 2.0 * float(z @ projected) + float((s * z * z).sum()), 0.0)
        beta = (n - gamma) / (beta_de + LOGME_EPSILON)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < LOGME_TOLERANCE:
            break
        lam = new_lam
    evidence = (d / 2.0 * math.log(alpha) + n / 2.0 * math.log(beta)
                - 0.5 * float(torch.log(alpha + beta * s).sum())
                - beta / 2.0 * (beta_de + LOGME_EPSILON) - alpha / 2.0 * (alpha_de + LOGME_EPSILON)
                - n / 2.0 * math.log(2 * math.pi))
    return evidence / n


# ---- H-score with shrinkage --------------------------------------------------------------------
def ledoit_wolf(n: int, centred_cov: torch.Tensor, sum_fourth: float) -> tuple[torch.Tensor, float]:
    """(shrunk covariance, shrinkage) of Ledoit & Wolf (2004) from the biased covariance S of the
    centred features and sum_i ||x_i - mean||^4; the shrinkage target is mu I, mu = tr(S) / d."""
    d = centred_cov.shape[0]
    mu = float(torch.trace(centred_cov)) / d
    delta_raw = float((centred_cov * centred_cov).sum())  # ||S||_F^2
    beta = (sum_fourth / n - delta_raw) / (d * n)
    delta = (delta_raw - 2.0 * mu * float(torch.trace(centred_cov)) + d * mu * mu) / d  # ||S - mu I||_F^2 / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta <= 0 or n < 2 else beta / delta
    shrunk = (1.0 - shrinkage) * centred_cov + shrinkage * mu * torch.eye(d, dtype=centred_cov.dtype)
    return shrunk, shrinkage


def shrunk_hscore_from_statistics(n: int, total: torch.Tensor, gram: torch.Tensor, sum_sq_x: torch.Tensor,
                                  sum_sq2: float, class_count: torch.Tensor, class_sum: torch.Tensor) -> float:
    """(1 - a) tr(pinv(cov_f) cov_g): cov_f the Ledoit-Wolf shrunk covariance (shrinkage a) of the
    features, cov_g the covariance (n - 1 in the denominator) of each sample's class mean; all
    from sums around an arbitrary shift."""
    mean = total / n  # of x - shift; centring removes the shift
    cov = gram / n - torch.outer(mean, mean)
    # sum ||x - mean||^4 expanded in the streamed moments (a = ||x||^2, b = x . mean, c = ||mean||^2)
    c = float(mean @ mean)
    sum_a, sum_b = float(torch.trace(gram)), float(mean @ total)
    sum_ab, sum_b2 = float(mean @ sum_sq_x), float(mean @ gram @ mean)
    fourth = sum_sq2 - 4 * sum_ab + 4 * sum_b2 + 2 * c * sum_a - 4 * c * sum_b + n * c * c
    cov_f, shrinkage = ledoit_wolf(n, cov, max(fourth, 0.0))
    present = class_count > 0
    class_mean = class_sum[present] / class_count[present, None] - mean  # centred
    cov_g = (class_mean.T * class_count[present]) @ class_mean / (n - 1)
    pinv = torch.linalg.pinv(cov_f, rtol=1e-15, hermitian=True)
    return float(torch.trace(pinv @ ((1.0 - shrinkage) * cov_g)))


# ---- NCE and LEEP ------------------------------------------------------------------------------
def nce_from_joint(joint: torch.Tensor) -> float:
    """-H(Y | Z) from the counts of (source argmax z, target label y), rows z."""
    p = joint.double() / joint.sum()
    p_z = p.sum(1, keepdim=True)
    conditional = torch.where(p > 0, p / p_z.clamp_min(1e-300), torch.ones_like(p))
    return float((p * torch.log(conditional)).sum())


def leep(source_probs: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None) -> float:
    """LEEP: mean_i log sum_z theta_i(z) P(y_i | z), with P(y, z) = mean_i theta_i(z) [y_i = y]."""
    theta = source_probs.double()
    labels = labels.long()
    k = num_classes or int(labels.max()) + 1
    joint = torch.zeros(k, theta.shape[1], dtype=torch.float64).index_add_(0, labels, theta) / len(theta)
    p_y_given_z = joint / joint.sum(0, keepdim=True)  # (target classes, source classes)
    expected = (theta @ p_y_given_z.T).gather(1, labels[:, None]).squeeze(1)
    return float(torch.log(expected).mean())
