"""The transferability estimators and rank correlations: each against a hand computation on a
tiny fixed example and against a naive numpy reference written here (direct ports of the
papers' reference code), in one batch and streamed over several."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transfer_cli.eval.correlation import average_ranks, kendall_tau, spearman_rho
from transfer_cli.eval.transferability import (FeatureStatistics, class_labels, leep, logme_from_statistics,
                                               nce_from_joint, target_matrix)


# ---- naive references (numpy ports of the papers' code) --------------------------------------
def ref_each_evidence(y_, f, fh, v, s, vh, N, D):
    epsilon, alpha, beta = 1e-5, 1.0, 1.0
    lam = alpha / beta
    tmp = vh @ (f @ y_)
    for _ in range(11):
        gamma = (s / (s + lam)).sum()
        m = v @ (tmp * beta / (alpha + beta * s))
        alpha_de = (m * m).sum()
        alpha = gamma / (alpha_de + epsilon)
        beta_de = ((y_ - fh @ m) ** 2).sum()
        beta = (N - gamma) / (beta_de + epsilon)
        new_lam = alpha / beta
        if np.abs(new_lam - lam) / lam < 0.01:
            break
        lam = new_lam
    evidence = (D / 2.0 * np.log(alpha) + N / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                - beta / 2.0 * (beta_de + epsilon) - alpha / 2.0 * (alpha_de + epsilon) - N / 2.0 * np.log(2 * np.pi))
    return evidence / N, alpha, beta


def ref_logme(f, y, regression=False):
    f = f.astype(np.float64)
    fh = f
    f = f.transpose()
    D, N = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    columns = ([y[:, i].astype(np.float64) for i in range(y.shape[1])] if regression
               else [(y == i).astype(np.float64) for i in range(int(y.max() + 1))])
    return float(np.mean([ref_each_evidence(c, f, fh, v, s, vh, N, D)[0] for c in columns]))


def ref_ledoit_wolf(X):
    n, d = X.shape
    X = X - X.mean(0)
    emp_cov = X.T @ X / n
    X2 = X ** 2
    emp_cov_trace = np.sum(X2, axis=0) / n
    mu = np.sum(emp_cov_trace) / d
    beta_ = np.sum(X2.T @ X2)
    delta_ = np.sum((X.T @ X) ** 2) / n ** 2
    beta = 1.0 / (d * n) * (beta_ / n - delta_)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + d * mu ** 2) / d
    beta = min(beta, delta)
    shrinkage = 0 if beta == 0 else beta / delta
    shrunk = (1 - shrinkage) * emp_cov
    shrunk.flat[:: d + 1] += shrinkage * mu
    return shrunk, shrinkage


def ref_regularized_hscore(features, labels):
    f = features - np.mean(features, axis=0, keepdims=True)
    covf_alpha, alpha = ref_ledoit_wolf(f)
    g = np.zeros_like(f)
    for i in range(int(labels.max() + 1)):
        g[labels == i] = np.mean(f[labels == i, :], axis=0)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.dot(np.linalg.pinv(covf_alpha, rcond=1e-15), (1 - alpha) * covg)))


def ref_nce(source_labels, target_labels):
    C_t, C_s, N = int(np.max(target_labels) + 1), int(np.max(source_labels) + 1), len(source_labels)
    joint = np.zeros((C_t, C_s))
    for s, t in zip(source_labels, target_labels):
        joint[int(t), int(s)] += 1.0 / N
    p_z = joint.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # source classes never predicted: masked below
        p_target_given_source = (joint / p_z).T
    mask = p_z.reshape(-1) != 0
    p_target_given_source = p_target_given_source[mask] + 1e-20
    entropy = np.sum(-p_target_given_source * np.log(p_target_given_source), axis=1, keepdims=True)
    return float(-np.sum(entropy * p_z.reshape((-1, 1))[mask]))


def ref_leep(predictions, labels):
    N, C_s = predictions.shape
    C_t = int(np.max(labels) + 1)
    normalized = predictions / float(N)
    joint = np.zeros((C_t, C_s))
    for i in range(C_t):
        joint[i] = np.sum(normalized[labels == i], axis=0)
    p_target_given_source = (joint / joint.sum(axis=0, keepdims=True)).T
    empirical = predictions @ p_target_given_source
    return float(np.mean(np.log([p[label] for p, label in zip(empirical, labels)])))


# ---- helpers ---------------------------------------------------------------------------------
def stats_of(features, y, task="multiclass", num_outputs=None, probs=None, batches=1) -> FeatureStatistics:
    features, y = torch.as_tensor(features), torch.as_tensor(y)
    k = num_outputs or (int(y.max()) + 1 if task in ("multiclass", "binary") else None)
    targets = target_matrix(task, y, k)
    labels = class_labels(task, y)
    stats = FeatureStatistics(features.shape[1], targets.shape[1], num_classes=None if labels is None else
                              (2 if task == "binary" else k),
                              source_classes=None if probs is None else probs.shape[1])
    for part in torch.arange(len(y)).chunk(batches):
        stats.update(features[part], targets[part], None if labels is None else labels[part],
                     None if probs is None else torch.as_tensor(probs)[part])
    return stats


def features_labels(n=60, d=6, k=3, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    centres = rng.normal(size=(k, d)) * 2
    return centres[labels] + rng.normal(size=(n, d)) + offset, labels


# ---- LogME -----------------------------------------------------------------------------------
def test_logme_equals_the_log_evidence_of_its_fixed_point_by_hand():
    """One regression column, d = 1 (F = [1, 2, 3], y = [1, 2, 2]): LogME is log p(y | F, alpha,
    beta) / n at the alpha, beta it converged to; p is the Gaussian N(0, I / beta + F F^T / alpha)."""
    f = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    gram, fty, yy = f.T @ f, f.T @ y[:, None], (y * y).sum()[None]
    # the fixed point by hand: lam = alpha / beta; with s = 14, F^T y = 11, y^T y = 9
    alpha = beta = 1.0
    for _ in range(11):
        lam = alpha / beta
        gamma = 14 / (14 + lam)
        m = 11 * beta / (alpha + beta * 14)
        alpha_de, beta_de = m * m, 9 - 2 * m * 11 + 14 * m * m
        alpha, beta = gamma / (alpha_de + 1e-5), (3 - gamma) / (beta_de + 1e-5)
        if abs(alpha / beta - lam) / lam < 0.01:
            break
    cov = torch.eye(3, dtype=torch.float64) / beta + f @ f.T / alpha
    exact = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), cov).log_prob(y) / 3
    score = logme_from_statistics(gram, fty, yy, 3)
    # the paper's evidence formula carries the epsilon in the two quadratic terms: equal to 1e-5
    assert score == pytest.approx(float(exact), abs=1e-4)
    assert score == pytest.approx(ref_logme(f.numpy(), y[:, None].numpy(), regression=True), abs=1e-12)


@pytest.mark.parametrize("batches", [1, 4])
@pytest.mark.parametrize("n,d", [(60, 6), (8, 12)])  # more samples than features, and fewer
def test_logme_classification_matches_the_reference(batches, n, d):
    f, y = features_labels(n=n, d=d)
    assert stats_of(f, y, batches=batches).logme() == pytest.approx(ref_logme(f, y), rel=1e-9, abs=1e-9)


def test_logme_regression_matches_the_reference_and_ignores_a_large_feature_mean():
    f, _ = features_labels()
    rng = np.random.default_rng(1)
    y = np.stack([f @ rng.normal(size=6) + 0.1 * rng.normal(size=60), rng.normal(size=60)], 1)
    ours = stats_of(f, y, task="regression", batches=3).logme()
    assert ours == pytest.approx(ref_logme(f, y, regression=True), rel=1e-9)
    shifted = f + 1000.0  # raw moments rebuilt from the shifted sums keep their digits
    assert stats_of(shifted, y, task="regression", batches=3).logme() == pytest.approx(
        ref_logme(shifted, y, regression=True), rel=1e-7)


def test_logme_leaves_out_a_class_with_no_sample():
    """Classes 0, 1, 3 of four (class 2 absent from the data): the score is that of the three
    classes present (an all-zero column would add a large evidence of its own)."""
    f, y = features_labels(k=3)
    present = np.array([0, 1, 3])[y]
    assert stats_of(f, present, num_outputs=4).logme() == pytest.approx(stats_of(f, y).logme(), rel=1e-12)
    assert stats_of(f, y, num_outputs=5).logme() == pytest.approx(ref_logme(f, y), rel=1e-9)


def test_logme_prefers_features_that_separate_the_classes():
    f, y = features_labels()
    noise = np.random.default_rng(5).normal(size=f.shape)
    assert stats_of(f, y).logme() > stats_of(noise, y).logme()


def test_binary_targets_are_two_one_hot_columns():
    f, y = features_labels(k=2)
    assert stats_of(f, y.astype(np.float32), task="binary").logme() == pytest.approx(ref_logme(f, y), rel=1e-9)


# ---- H-score ---------------------------------------------------------------------------------
def test_hscore_by_hand_with_shrinkage():
    """x = (1,0), (0,2), (-1,0), (0,-2), labels 0,0,1,1 (worked on paper): S = diag(0.5, 2),
    mu = 1.25, Ledoit-Wolf shrinkage 17/18, cov_f = diag(21.75, 23.25) / 18, class means
    +-(0.5, 1), cov_g = 4/3 [[0.25, 0.5], [0.5, 1]]; H = (1/18) tr(cov_f^-1 cov_g)."""
    f = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -2.0]])
    y = np.array([0, 0, 1, 1])
    hand = 1 / 65.25 + 4 / 69.75
    assert stats_of(f, y).hscore() == pytest.approx(hand, rel=1e-12)
    assert stats_of(f, y, batches=2).hscore() == pytest.approx(hand, rel=1e-12)
    assert ref_regularized_hscore(f, y) == pytest.approx(hand, rel=1e-12)


def test_hscore_one_feature_by_hand():
    """d = 1 never shrinks: x = 0, 2, 4, 6, labels 0,0,1,1: var 5, class means -2, +2 around 3,
    cov_g = 2 (4 + 4) / 3 = 16/3, H = 16/15."""
    assert stats_of(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])).hscore() == pytest.approx(16 / 15)


@pytest.mark.parametrize("batches", [1, 5])
@pytest.mark.parametrize("offset", [0.0, 500.0])
def test_hscore_matches_the_reference(batches, offset):
    f, y = features_labels(n=50, d=8, k=4, offset=offset)
    assert stats_of(f, y, batches=batches).hscore() == pytest.approx(ref_regularized_hscore(f, y), rel=1e-7)


def test_hscore_with_fewer_samples_than_features_matches_the_reference():
    f, y = features_labels(n=10, d=16, k=2)
    assert stats_of(f, y, batches=3).hscore() == pytest.approx(ref_regularized_hscore(f, y), rel=1e-7)


# ---- NCE and LEEP ----------------------------------------------------------------------------
def test_nce_by_hand():
    """z = 0,0,1,1 and y = 0,1,1,1: H(Y | z=0) = ln 2, H(Y | z=1) = 0, so NCE = -ln(2) / 2."""
    joint = torch.zeros(2, 2)
    for z, y in [(0, 0), (0, 1), (1, 1), (1, 1)]:
        joint[z, y] += 1
    assert nce_from_joint(joint) == pytest.approx(-math.log(2) / 2, abs=1e-12)
    assert ref_nce(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx(-math.log(2) / 2)


def test_leep_by_hand():
    """theta = (1, 0), (0.5, 0.5), y = 0, 1: P(y, z) = [[0.5, 0], [0.25, 0.25]], P(y | z=0) = (2/3,
    1/3), P(y | z=1) = (0, 1); both samples get 2/3, so LEEP = log(2/3)."""
    theta, y = torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.tensor([0, 1])
    assert leep(theta, y) == pytest.approx(math.log(2 / 3), abs=1e-12)


@pytest.mark.parametrize("batches", [1, 3])
def test_nce_and_leep_streamed_match_the_references(batches):
    f, y = features_labels(n=90, k=3)
    logits = np.random.default_rng(2).normal(size=(90, 7)) + 3 * np.eye(7)[y * 2]  # source 7 classes
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    stats = stats_of(f, y, probs=torch.tensor(probs), batches=batches)
    assert stats.nce() == pytest.approx(ref_nce(probs.argmax(1), y), abs=1e-12)
    assert stats.leep() == pytest.approx(ref_leep(probs, y), rel=1e-12)
    assert stats.nce() > -math.log(3) and stats.leep() > -math.log(3)  # better than knowing nothing


def test_estimators_without_class_labels_say_so():
    f, y = features_labels()
    stats = stats_of(f, y.astype(np.float64)[:, None], task="regression")
    for name in ("hscore", "nce", "leep"):
        with pytest.raises(ValueError, match="needs class labels"):
            getattr(stats, name)()


# ---- rank correlations -----------------------------------------------------------------------
def test_kendall_and_spearman_by_hand():
    # 5 concordant pairs, 1 discordant: tau = 4/6; rank differences 0,1,-1,0: rho = 1 - 6*2/(4*15)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # a tie in x: tau-b = 5 / sqrt(5 * 6); rho of the average ranks (1, 2.5, 2.5, 4) = 4.5 / sqrt(4.5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert average_ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1], [2]) is None and spearman_rho([1, 1], [1, 2]) is None


def test_correlations_match_scipy_on_random_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, size=12).tolist(), rng.normal(size=12).tolist()
    assert kendall_tau(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)
    assert spearman_rho(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
