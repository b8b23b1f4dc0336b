"""Metrics computed from per-sample records: accuracy, calibration, intervals, paired tests.

Every function takes plain arrays (lists, numpy arrays or torch tensors) so that notebooks can
feed it the columns of `RunResult.records` directly. Accuracies are fractions in [0, 1];
multiply by 100 for the percent tables of the papers.

- `topk_correct(logits, labels, k)` / `topk_accuracy(...)`: top-k hits and their mean.
- `expected_calibration_error(confidence, correct)` and `reliability_table(...)`: ECE with 15
  equal-width confidence bins (Guo et al. 2017, the setting C-TPT and most TTA papers report),
  and the per-bin numbers behind a reliability diagram.
- `accuracy_ci(correct)`: a 95% interval for an accuracy (Wilson score, or percentile bootstrap).
- `paired_bootstrap(correct_a, correct_b)`: interval for the accuracy difference of two methods
  evaluated on the same samples (resampling samples, keeping the pairs together).
- `mcnemar_exact(correct_a, correct_b)`: exact McNemar test on the samples where they disagree.

The Wilson interval, the exact binomial test behind McNemar's and the bootstrap are scipy.stats'.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "topk_correct", "topk_accuracy", "softmax_confidence", "expected_calibration_error",
    "reliability_table", "accuracy_ci", "paired_bootstrap", "mcnemar_exact",
    "Interval", "PairedDifference", "McNemarResult",
]


def _array(x, dtype=None) -> np.ndarray:
    """A numpy view of a list, array or (cpu or cuda) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _bool_vector(correct, name: str = "correct") -> np.ndarray:
    arr = _array(correct)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one value per sample (1-D), got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 or True/False values")
        arr = arr.astype(bool)
    return arr


def topk_correct(logits, labels, k: int = 1) -> np.ndarray:
    """Whether each sample's label is among its k highest logits: bool array [N].

    logits: [N, C]; labels: [N] integer class indices. Ties are broken towards the lower class
    index (the order `argsort` gives), the same rule as `argmax`.
    """
    scores = _array(logits, np.float64)
    targets = _array(labels).astype(np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"expected logits [N, C] and labels [N], got {scores.shape} and {targets.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k={k} is outside 1..{scores.shape[1]} (the number of classes)")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == targets[:, None]).any(axis=1)


def topk_accuracy(logits, labels, k: int = 1) -> float:
    """Fraction of samples whose label is among their k highest logits."""
    return float(topk_correct(logits, labels, k).mean())


def softmax_confidence(logits) -> tuple[np.ndarray, np.ndarray]:
    """(confidence [N], prediction [N]): the highest softmax probability and its class."""
    scores = _array(logits, np.float64)
    scores = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.max(axis=1), probs.argmax(axis=1)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to bin 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_table(confidence, correct, n_bins: int = 15) -> pd.DataFrame:
    """The data of a reliability diagram: one row per equal-width confidence bin.

    Columns: `lower`, `upper` (bin edges; a bin holds confidences in (lower, upper]),
    `count`, `confidence` (mean confidence in the bin), `accuracy` (fraction correct in the
    bin), `gap` (accuracy - confidence). Empty bins have count 0 and NaN means.
    """
    count, mean_conf, accuracy = _bins(confidence, correct, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame({
        "lower": edges[:-1], "upper": edges[1:], "count": count,
        "confidence": mean_conf, "accuracy": accuracy, "gap": accuracy - mean_conf,
    })


def _bins(confidence, correct, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean confidence, accuracy) per bin, each `[n_bins]` (empty bins: NaN means)."""
    conf = _array(confidence, np.float64)
    hits = _bool_vector(correct)
    if conf.shape != hits.shape:
        raise ValueError(f"confidence {conf.shape} and correct {hits.shape} differ in length")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidence values must lie in [0, 1] (pass softmax probabilities, not logits)")
    bins = _bin_index(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=hits.astype(np.float64), minlength=n_bins) / count
    return count, mean_conf, accuracy


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|.

    15 equal-width bins over [0, 1] by default. `confidence` is each sample's top softmax
    probability (see `softmax_confidence`), `correct` whether that prediction was right.
    """
    count, mean_conf, accuracy = _bins(confidence, correct, n_bins)
    filled = count > 0
    if not filled.any():
        raise ValueError("expected_calibration_error needs at least one sample")
    weights = count[filled] / count[filled].sum()
    return float(np.sum(weights * np.abs(accuracy[filled] - mean_conf[filled])))


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    method: str

    def __str__(self) -> str:
        return (f"{100 * self.estimate:.2f}% [{100 * self.low:.2f}, {100 * self.high:.2f}] "
                f"({100 * self.level:g}% {self.method})")


def accuracy_ci(correct, level: float = 0.95, method: str = "wilson", n_boot: int = 10_000,
                seed: int = 0) -> Interval:
    """Accuracy with a confidence interval.

    method="wilson": the Wilson score interval (good coverage even near 0% or 100% and for
    small N). method="bootstrap": percentile bootstrap over samples, `n_boot` resamples drawn
    from a generator seeded by `seed`.
    """
    hits = _bool_vector(correct)
    n = hits.size
    if n == 0:
        raise ValueError("accuracy_ci needs at least one sample")
    acc = float(hits.mean())
    if method == "wilson":
        from scipy import stats
        ci = stats.binomtest(int(hits.sum()), n).proportion_ci(level, method="wilson")
        return Interval(acc, max(0.0, float(ci.low)), min(1.0, float(ci.high)), level, "Wilson")
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = rng.binomial(n, acc, size=n_boot) / n   # resampling N Bernoulli hits = Binomial(N, acc)
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return Interval(acc, float(low), float(high), level, "bootstrap")
    raise ValueError(f"method must be 'wilson' or 'bootstrap', got {method!r}")


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same samples, with a paired bootstrap interval."""

    difference: float
    low: float
    high: float
    level: float
    accuracy_a: float
    accuracy_b: float
    n: int

    def __str__(self) -> str:
        return (f"{100 * self.difference:+.2f} points [{100 * self.low:+.2f}, {100 * self.high:+.2f}] "
                f"({100 * self.level:g}% paired bootstrap, n={self.n})")


def _paired(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a = _bool_vector(correct_a, "correct_a")
    b = _bool_vector(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"paired comparisons need the same samples: got {a.size} and {b.size} values")
    if a.size == 0:
        raise ValueError("paired comparisons need at least one sample")
    return a, b


def paired_bootstrap(correct_a, correct_b, level: float = 0.95, n_boot: int = 10_000,
                     seed: int = 0) -> PairedDifference:
    """Percentile bootstrap interval for accuracy(A) - accuracy(B) on the same samples.

    Each resample draws N sample indices with replacement and scores both methods on them, so
    the correlation between the two methods (they see the same images) is kept. Element i of
    `correct_a` and `correct_b` must refer to the same sample.
    """
    a, b = _paired(correct_a, correct_b)
    per_sample = a.astype(np.int8) - b.astype(np.int8)          # +1, 0 or -1
    difference = float(per_sample.mean())
    if a.size == 1:                                             # every resample is the one sample
        low = high = difference
    else:
        from scipy import stats
        ci = stats.bootstrap((per_sample,), np.mean, n_resamples=n_boot, vectorized=True, method="percentile",
                             batch=max(1, 2_000_000 // a.size),    # bounds memory at ~2M indices
                             confidence_level=level, rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return PairedDifference(difference, low, high, level, float(a.mean()), float(b.mean()), int(a.size))


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: `a_only` samples only A got right, `b_only` only B got right."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(correct_a, correct_b) -> McNemarResult:
    """Two-sided exact McNemar test of "A and B are equally accurate" on paired samples.

    Only discordant samples count: under the null each is equally likely to favour A or B,
    so a_only ~ Binomial(a_only + b_only, 1/2): p is the exact two-sided binomial test's,
    min(1, 2 * P(X <= min(a_only, b_only))). With no discordant samples p = 1.
    """
    a, b = _paired(correct_a, correct_b)
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    if a_only + b_only == 0:
        return McNemarResult(a_only, b_only, 1.0)
    from scipy import stats
    return McNemarResult(a_only, b_only, float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue))
