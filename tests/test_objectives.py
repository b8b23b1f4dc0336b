
import pytest
import torch

from tptlib.objectives import entropy, marginal_entropy, n_selected, select_confident


def test_marginal_entropy_is_entropy_of_mean_softmax():
    torch.manual_seed(0)
    logits = torch.randn(6, 10) * 3
    p_bar = logits.softmax(-1).mean(0)
    expected = -(p_bar * p_bar.log()).sum()
    assert torch.allclose(marginal_entropy(logits), expected, atol=1e-6)


def test_marginal_entropy_differs_from_entropy_of_mean_log_probabilities():
    # Two confident views that disagree: averaging probabilities keeps the third class near zero,
    # averaging log-probabilities lifts it (its geometric mean is not that small).
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    p_bar = logits.softmax(-1).mean(0)
    right = marginal_entropy(logits)
    wrong = entropy(logits.log_softmax(-1).mean(0))
    assert float(right) == pytest.approx(float(-(p_bar * p_bar.log()).sum()), abs=1e-6)
    assert float(wrong) - float(right) > 0.05


def test_marginal_entropy_of_identical_views_equals_entropy_of_one_view():
    one = torch.randn(1, 12)
    assert torch.allclose(marginal_entropy(one.expand(5, -1)), entropy(one)[0], atol=1e-6)


def test_marginal_entropy_is_batched_over_leading_dims():
    x = torch.randn(3, 4, 9)
    assert torch.allclose(marginal_entropy(x), torch.stack([marginal_entropy(x[i]) for i in range(3)]))


def test_selection_keeps_floor_of_64_rho_lowest_entropy_views():
    torch.manual_seed(1)
    logits = torch.randn(64, 20) * torch.linspace(0.1, 5, 64)[:, None]
    for rho, k in [(0.1, 6), (0.05, 3), (0.5, 32), (1.0, 64)]:
        idx = select_confident(logits, rho)
        assert idx.shape == (k,) and n_selected(64, rho) == k
        ent = entropy(logits)
        # every kept view has lower entropy than every dropped view
        dropped = torch.ones(64, dtype=torch.bool)
        dropped[idx] = False
        assert ent[idx].max() <= ent[dropped].min() if dropped.any() else True


def test_selection_rejects_a_ratio_that_keeps_nothing():
    with pytest.raises(ValueError, match="keeps no view"):
        select_confident(torch.randn(8, 3), 0.1)
