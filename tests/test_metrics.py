"""Metrics on cases small enough to check by hand."""
import math

import numpy as np
import pytest
import torch

from tptlib import metrics


def test_topk_correct_by_hand():
    logits = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    labels = [0, 0]
    assert metrics.topk_correct(logits, labels, 1).tolist() == [True, False]
    assert metrics.topk_correct(logits, labels, 2).tolist() == [True, False]
    assert metrics.topk_correct(logits, labels, 3).tolist() == [True, True]
    assert metrics.topk_accuracy(torch.tensor(logits), torch.tensor(labels), 1) == 0.5


def test_topk_ties_go_to_the_lower_class_like_argmax():
    logits = torch.tensor([[1.0, 1.0, 0.0]])
    assert logits.argmax(1).item() == 0
    assert metrics.topk_correct(logits, [0], 1).tolist() == [True]
    assert metrics.topk_correct(logits, [1], 1).tolist() == [False]
    assert metrics.topk_correct(logits, [1], 2).tolist() == [True]


def test_topk_refuses_k_beyond_the_classes():
    with pytest.raises(ValueError, match="outside 1..3"):
        metrics.topk_correct([[1.0, 2.0, 3.0]], [0], 5)


def test_softmax_confidence():
    conf, pred = metrics.softmax_confidence([[0.0, math.log(3.0)]])
    assert pred.tolist() == [1]
    assert conf[0] == pytest.approx(0.75)


def test_ece_two_bins_by_hand():
    # bin (14/15, 1]: confidences 0.95, 0.95, one right  -> |0.5 - 0.95| = 0.45
    # bin (8/15, 9/15]: confidences 0.55, 0.55, both right -> |1.0 - 0.55| = 0.45
    ece = metrics.expected_calibration_error([0.95, 0.95, 0.55, 0.55], [1, 0, 1, 1])
    assert ece == pytest.approx(0.45)


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert metrics.expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)


def test_ece_weights_bins_by_their_size():
    # 3 samples at 0.95 all right (gap 0.05), 1 sample at 0.35 wrong (gap 0.35)
    ece = metrics.expected_calibration_error([0.95, 0.95, 0.95, 0.35], [1, 1, 1, 0])
    assert ece == pytest.approx(0.75 * 0.05 + 0.25 * 0.35)


def test_ece_is_the_reliability_tables_weighted_gap_to_the_bit():
    # the number a summary reports and the diagram drawn from the table agree exactly
    rng = np.random.default_rng(0)
    for n in (1, 7, 300):
        conf, hits = rng.random(n) ** 0.3, rng.random(n) < 0.6
        table = metrics.reliability_table(conf, hits)
        filled = table[table["count"] > 0]
        weights = filled["count"] / filled["count"].sum()
        assert metrics.expected_calibration_error(conf, hits) == float((weights * filled["gap"].abs()).sum())
    with pytest.raises(ValueError, match="at least one sample"):
        metrics.expected_calibration_error([], [])


def test_reliability_table_bins_are_upper_inclusive():
    table = metrics.reliability_table([1 / 15, 1.0, 0.0], [1, 1, 0])
    assert len(table) == 15
    assert table["count"].tolist()[0] == 2          # 0.0 and exactly 1/15 both land in bin 0
    assert table["count"].tolist()[-1] == 1         # 1.0 lands in the last bin
    assert table["lower"].iloc[0] == 0.0 and table["upper"].iloc[-1] == 1.0
    assert table["accuracy"].iloc[0] == pytest.approx(0.5)
    assert np.isnan(table["accuracy"].iloc[5])      # empty bin


def test_reliability_table_refuses_logits():
    with pytest.raises(ValueError, match="softmax probabilities"):
        metrics.reliability_table([2.5, 0.1], [1, 0])


def test_wilson_interval_matches_the_textbook_value():
    ci = metrics.accuracy_ci([1] * 8 + [0] * 2)
    assert ci.estimate == pytest.approx(0.8)
    assert ci.low == pytest.approx(0.4902, abs=1e-4)
    assert ci.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_at_zero_stays_inside_0_1():
    ci = metrics.accuracy_ci([False] * 10)
    assert ci.low == pytest.approx(0.0, abs=1e-12)
    assert ci.high == pytest.approx(0.2775, abs=1e-4)


def test_bootstrap_interval_agrees_with_wilson_for_large_n():
    correct = [1] * 280 + [0] * 120
    wilson = metrics.accuracy_ci(correct)
    boot = metrics.accuracy_ci(correct, method="bootstrap", n_boot=4000)
    assert boot.estimate == wilson.estimate == pytest.approx(0.7)
    assert boot.low == pytest.approx(wilson.low, abs=0.006)
    assert boot.high == pytest.approx(wilson.high, abs=0.006)


def test_accuracy_ci_refuses_non_binary_values():
    with pytest.raises(ValueError, match="0/1"):
        metrics.accuracy_ci([0.2, 1.0])


def test_paired_bootstrap_extremes():
    same = metrics.paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1], n_boot=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    apart = metrics.paired_bootstrap([1, 1, 1], [0, 0, 0], n_boot=200)
    assert (apart.difference, apart.low, apart.high) == (1.0, 1.0, 1.0)


def test_paired_bootstrap_width_follows_the_discordant_samples():
    # 1000 samples; A wins 100 of them, the rest agree. Per-sample difference: 100 ones, 900 zeros,
    # standard error sqrt(0.1 * 0.9 / 1000) = 0.0095, so the interval is about 0.1 +- 0.0186.
    a = np.ones(1000, dtype=bool)
    b = np.ones(1000, dtype=bool)
    b[:100] = False
    res = metrics.paired_bootstrap(a, b, n_boot=4000, seed=1)
    assert res.difference == pytest.approx(0.1)
    assert res.low == pytest.approx(0.1 - 0.0186, abs=0.003)
    assert res.high == pytest.approx(0.1 + 0.0186, abs=0.003)
    assert (res.accuracy_a, res.accuracy_b, res.n) == (1.0, 0.9, 1000)


def test_paired_comparisons_refuse_different_lengths():
    with pytest.raises(ValueError, match="same samples"):
        metrics.paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="same samples"):
        metrics.mcnemar_exact([1, 0], [1])


def test_mcnemar_exact_by_hand():
    # a_only = 1, b_only = 9: p = 2 * P(X <= 1 | n=10, 1/2) = 2 * (1 + 10) / 1024
    a = [1] + [0] * 9 + [1] * 5
    b = [0] + [1] * 9 + [1] * 5
    res = metrics.mcnemar_exact(a, b)
    assert (res.a_only, res.b_only) == (1, 9)
    assert res.p_value == pytest.approx(22 / 1024)
    assert metrics.mcnemar_exact(b, a).p_value == pytest.approx(22 / 1024)


def test_mcnemar_exact_edge_cases():
    assert metrics.mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    assert metrics.mcnemar_exact([0] * 5, [1] * 5).p_value == pytest.approx(2 / 32)
    assert metrics.mcnemar_exact([1, 0], [0, 1]).p_value == 1.0   # 2 * 3/4 capped at 1


def test_mcnemar_exact_is_stable_for_large_counts():
    a = np.r_[np.ones(5000), np.zeros(5000)].astype(bool)
    b = ~a
    assert metrics.mcnemar_exact(a, b).p_value == 1.0
    b2 = a.copy()
    b2[:100] = False                                # 100 flips, all favouring A
    assert metrics.mcnemar_exact(a, b2).p_value == pytest.approx(2 * 0.5 ** 100)
