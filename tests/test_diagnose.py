"""`tpt diagnose`: the measurements of what one TPT step does, on a small task with known bookkeeping."""
import math

import pytest

import tptlib as tpt
from tptlib.analysis.diagnose import COLUMNS, diagnose, diagnosis_table, format_table

EUROSAT_SAMPLES = 24            # conftest's data_root


@pytest.fixture(scope="module")
def setup(clip, task):
    """The micro-CLIP architecture with random weights on a fake EuroSAT of 24 images (conftest.py)."""
    return clip, task


def test_diagnosis_counts_add_up(setup):
    clip, task = setup
    r = diagnose(clip, task, n=12, method=tpt.TPT(lr=0.5), n_views=20, batch_size=12, progress=False)
    assert r["n"] == 12
    # fixed - broken is the accuracy difference; every flip is a changed prediction
    assert math.isclose(r["tpt"] - r["zero_shot"], 100 * (r["fixed"] - r["broken"]) / 12, abs_tol=1e-6)
    assert r["changed"] >= 100 * (r["fixed"] + r["broken"]) / 12 - 1e-6
    assert math.isclose(r["kept_avg"] - r["zero_shot"], 100 * (r["kept_fixed"] - r["kept_broken"]) / 12, abs_tol=1e-6)
    assert r["wording_min"] <= r["wording_max"] and r["margin_cos"] >= 0 and r["feature_1mcos"] > 0


def test_no_step_changes_nothing(setup):
    clip, task = setup
    r = diagnose(clip, task, n=8, method=tpt.TPT(steps=0), n_views=20, batch_size=8, progress=False)
    assert r["changed"] == 0 and r["fixed"] == r["broken"] == 0 and r["tpt"] == r["zero_shot"]
    assert r["max_dlogit"] < 1e-5 and math.isnan(r["feature_1mcos"])     # equal up to rounding


def test_table_has_one_row_per_task_and_prints(setup):
    clip, task = setup
    r = diagnose(clip, task, n=8, n_views=20, batch_size=8, progress=False)
    frame = diagnosis_table([r, {**r, "task": "other"}])
    assert list(frame.index) == ["eurosat", "other"] and list(frame.columns) == list(COLUMNS.values())
    text = format_table(frame)
    assert text.splitlines()[0].split()[0] == "task" and len(text.splitlines()) == 3


def test_plot_has_three_intervals_per_task_around_their_estimates(setup):
    import matplotlib
    matplotlib.use("Agg")
    from tptlib.analysis.diagnose import plot_diagnosis

    clip, task = setup
    r = diagnose(clip, task, n=8, n_views=20, batch_size=8, progress=False)
    frame = diagnosis_table([r, {**r, "task": "other", "tpt": 100.0, "fixed": 8, "broken": 0}])
    ax = plot_diagnosis(frame)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zero-shot", "kept views' average", "TPT"]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == 2 and ticks[1].startswith("other\nTPT 8/0")
    for container in ax.containers:                     # one errorbar series per method, one point per task
        points, _, (bars,) = container.lines
        ys = points.get_ydata()
        assert len(ys) == 2
        for y, seg in zip(ys, bars.get_segments()):
            assert seg[0][1] <= y + 1e-9 and y - 1e-9 <= seg[1][1]      # the interval holds the estimate
    assert "n = 8 per task" in ax.get_title()
