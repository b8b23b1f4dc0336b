"""tptlib.analysis: tables in the papers' layout, published numbers, flips, per-class deltas,
calibration and kept views, on hand-made records whose answers are known."""
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from tptlib import analysis
from tptlib.runs import RunResult, summarize

matplotlib.use("Agg")


def make_run(task, method, label, before, after, config=None, kept_correct=None, view_preds=None,
             errors=(), seconds=0.1):
    """A RunResult whose view-0 predictions are `before` (initial prompt) and `after` (adapted).

    Logits put 2.0 on the predicted class and 0 elsewhere, over 3 classes.
    """
    n = len(label)
    rows = []
    for i in range(n):
        if i in errors:
            rows.append({"idx": i, "label": label[i], "error": "CorruptImageError: x", "logits": None,
                         "logits_before": None, "correct": None, "correct_before": None, "pred": None,
                         "pred_before": None, "kept_correct": None, "view_preds": None, "loss": None,
                         "correct5": None, "correct5_before": None, "fp32_retry": None, "seconds": None})
            continue
        lb, la = np.zeros(3, np.float32), np.zeros(3, np.float32)
        lb[before[i]], la[after[i]] = 2.0, 2.0
        rows.append({"idx": i, "label": label[i], "error": None, "logits": la, "logits_before": lb,
                     "pred": after[i], "pred_before": before[i], "correct": after[i] == label[i],
                     "correct_before": before[i] == label[i], "correct5": True, "correct5_before": True,
                     "kept_correct": None if kept_correct is None else kept_correct[i],
                     "view_preds": [] if view_preds is None else view_preds[i],
                     "loss": None, "fp32_retry": False, "seconds": seconds})
    records = pd.DataFrame(rows)
    for col in ("correct", "correct_before", "correct5", "correct5_before", "fp32_retry"):
        records[col] = records[col].astype("boolean")
    for col in ("kept_correct", "loss", "seconds"):
        records[col] = records[col].astype("float64")
    params = {"task": {"name": task, "n_classes": 3, "size": n},
              "method": {"name": method, "config": {"name": method, **(config or {})}},
              "model": {"name": "micro", "pretrained": None}, "limit": None}
    summary = {"task": task, "method": method, **summarize(records, n)}
    return RunResult(out=Path(f"/runs/{task}-{method}"), params=params, records=records, summary=summary)


LABEL = [0, 1, 2, 0, 1, 2, 0, 1]
BEFORE = [0, 1, 2, 1, 0, 2, 1, 1]   # right, right, right, wrong, wrong, right, wrong, right
AFTER = [0, 1, 1, 0, 1, 2, 1, 1]    # right, right, wrong, right, right, right, wrong, right


def test_task_labels_drop_the_micro_prefix():
    assert analysis.task_label("micro:V2") == "V2"
    assert analysis.task_label("A") == "A"


def test_published_results_are_filtered_by_backbone_and_accept_open_clip_names():
    vit = analysis.published_results("ViT-B-16")
    assert set(vit["backbone"]) == {"ViT-B/16"}
    row = vit[(vit["method"] == "TPT") & (vit["task"] == "A")]
    assert row["top1"].item() == pytest.approx(54.77)
    assert set(analysis.published_results("RN50")["backbone"]) == {"RN50"}
    assert analysis.paper_backbone("ViT-B-16-quickgelu") == "ViT-B/16"
    assert analysis.paper_backbone("micro") is None


def test_published_results_refuse_an_unknown_backbone_and_name_the_known_ones():
    with pytest.raises(ValueError, match="RN50"):
        analysis.published_results("ViT-L-14")


def test_method_label_names_tpt_settings_that_differ_from_the_default():
    run = lambda cfg: make_run("micro:A", "tpt", LABEL, BEFORE, AFTER, config=cfg)  # noqa: E731
    default = {"steps": 1, "lr": 5e-3, "selection_p": 0.1, "ctx_init": "a photo of a", "n_ctx": 4,
               "weight_decay": 0.01}
    assert analysis.method_label(run(default)) == "TPT"
    assert analysis.method_label(run({**default, "steps": 4})) == "TPT (steps=4)"
    assert analysis.method_label(make_run("A", "zeroshot", LABEL, BEFORE, BEFORE)) == "CLIP zero-shot"


def test_paper_table_has_the_papers_averages_and_method_order():
    frame = pd.DataFrame({"method": ["TPT", "CLIP zero-shot"] * 3,
                          "task": ["I", "I", "A", "A", "K", "K"],
                          "top1": [60.0, 50.0, 30.0, 20.0, 40.0, 35.0]})
    table = analysis.paper_table(frame, ["I"], ["A", "K"])
    assert list(table.index) == ["CLIP zero-shot", "TPT"]
    assert list(table.columns) == ["I", "A", "K", "Average", "OOD Average"]
    assert table.loc["TPT", "Average"] == pytest.approx(130 / 3)
    assert table.loc["TPT", "OOD Average"] == pytest.approx(35.0)


def test_paper_table_leaves_an_average_empty_when_a_task_is_missing():
    frame = pd.DataFrame({"method": ["TPT", "TPT", "Ensemble"], "task": ["I", "A", "I"], "top1": [1.0, 2.0, 3.0]})
    table = analysis.paper_table(frame, ["I", "A"])
    assert np.isnan(table.loc["Ensemble", "Average"])
    assert "OOD Average" not in table.columns


def test_paper_table_leaves_out_methods_with_none_of_the_tasks():
    frame = pd.DataFrame({"method": ["TPT", "ZERO"], "task": ["I", "Pets"], "top1": [1.0, 2.0]})
    assert list(analysis.paper_table(frame, ["I"]).index) == ["TPT"]


def test_run_frame_and_interval_table_come_from_the_summaries():
    zs = make_run("micro:A", "zeroshot", LABEL, BEFORE, BEFORE)
    frame = analysis.run_frame([zs])
    assert frame.loc[0, "task"] == "A" and frame.loc[0, "method"] == "CLIP zero-shot"
    assert frame.loc[0, "top1"] == pytest.approx(100 * 5 / 8)
    assert frame.loc[0, "low"] < frame.loc[0, "top1"] < frame.loc[0, "high"]
    assert (frame.loc[0, "classes_seen"], frame.loc[0, "n_classes"]) == (3, 3)
    assert analysis.run_frame([analysis.head(zs, 1)]).loc[0, "classes_seen"] == 1
    cell = analysis.interval_table(frame, ["A"]).loc["CLIP zero-shot", "A"]
    assert cell.startswith("62.5 [")


def test_compare_runs_pairs_samples_and_counts_discordant_ones():
    a = make_run("micro:A", "tpt", LABEL, BEFORE, AFTER)
    b = make_run("micro:A", "zeroshot", LABEL, BEFORE, BEFORE)
    out = analysis.compare_runs(a, b)
    assert out["n"] == 8
    assert out["delta"] == pytest.approx(100 * (6 - 5) / 8)
    assert (out["a_only"], out["b_only"]) == (2, 1)
    assert out["low"] <= out["delta"] <= out["high"]
    assert 0 < out["p_value"] <= 1


def test_compare_runs_skips_error_rows():
    a = make_run("A", "tpt", LABEL, BEFORE, AFTER, errors={0})
    b = make_run("A", "zeroshot", LABEL, BEFORE, BEFORE)
    assert analysis.compare_runs(a, b)["n"] == 7


def test_flips_are_counted_from_before_and_after_of_one_run():
    run = make_run("micro:R", "tpt", LABEL, BEFORE, AFTER)
    kinds = analysis.flip_kind(run.records)
    assert list(kinds) == ["stayed right", "stayed right", "right→wrong", "wrong→right", "wrong→right",
                           "stayed right", "stayed wrong", "stayed right"]
    counts = analysis.flip_counts([run]).iloc[0]
    assert (counts["wrong→right"], counts["right→wrong"], counts["net"]) == (2, 1, 1)
    assert counts["net_points"] == pytest.approx(12.5)
    changed = int((run.records["pred"] != run.records["pred_before"]).sum())
    assert counts["changed"] == changed == counts["wrong→right"] + counts["right→wrong"] + counts["wrong→other wrong"]


def test_changed_predictions_include_wrong_to_other_wrong():
    after = list(AFTER)
    after[6] = 2                                   # label 0: wrong before (1), wrong after (2)
    counts = analysis.flip_counts([make_run("micro:R", "tpt", LABEL, BEFORE, after)]).iloc[0]
    assert (counts["wrong→right"], counts["right→wrong"]) == (2, 1)
    assert (counts["changed"], counts["wrong→other wrong"]) == (4, 1)


def test_per_class_deltas_add_up_to_the_flips():
    run = make_run("micro:R", "tpt", LABEL, BEFORE, AFTER)
    table = analysis.per_class_deltas(run.records, ["circle", "square", "star"])
    assert table["n"].sum() == 8
    assert table["gained"].sum() == 2 and table["lost"].sum() == 1
    star = table.set_index("class").loc["star"]
    assert star["top1_before"] == pytest.approx(100.0) and star["delta"] == pytest.approx(-50.0)
    assert table["delta"].is_monotonic_increasing


def test_reliability_matches_the_summary_ece():
    run = make_run("micro:R", "tpt", LABEL, BEFORE, AFTER)
    bins = analysis.reliability(run)
    assert set(bins["stage"]) == {"before", "after"}
    assert bins[bins["stage"] == "after"]["ece"].iloc[0] == pytest.approx(run.summary["ece"])
    assert bins[bins["stage"] == "before"]["ece"].iloc[0] == pytest.approx(run.summary["ece_before"])
    assert bins.groupby("stage")["count"].sum().tolist() == [8, 8]


def test_kept_views_compares_selection_with_view0_and_all_views():
    view_preds = [[LABEL[i], LABEL[i], (LABEL[i] + 1) % 3, (LABEL[i] + 1) % 3] for i in range(8)]   # half right
    kept = [1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0]
    run = make_run("micro:R", "tpt", LABEL, BEFORE, AFTER, kept_correct=kept, view_preds=view_preds)
    row = analysis.kept_views([run]).iloc[0]
    assert row["all_views"] == pytest.approx(50.0)
    assert row["kept_views"] == pytest.approx(100 * np.mean(kept))
    assert row["view0"] == pytest.approx(62.5) and row["tpt"] == pytest.approx(75.0)
    assert row["kept_all_wrong"] == pytest.approx(25.0)


def test_gallery_draws_one_titled_panel_per_row(tmp_path):
    from PIL import Image

    from tptlib.data.base import Task
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), (i * 60, 0, 0)).save(p)
        paths.append((str(p), i))
    task = Task("toy", ["circle", "square", "star"], paths, tmp_path)
    rows = pd.DataFrame({"idx": [0, 2], "label": [0, 2], "pred_before": [0, 1], "pred": [1, 2]})
    fig = analysis.gallery(task, rows, size=24, ncols=3, title="flips")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["#0 label: circle\ncircle → square", "#2 label: star\nsquare → star"]
    assert analysis.view0_image(task, 0, 24).size == (24, 24)


def test_head_keeps_the_first_samples_and_recomputes_the_summary():
    run = make_run("micro:R", "tpt", LABEL, BEFORE, AFTER)
    first = analysis.head(run, 4)
    assert list(first.records["idx"]) == [0, 1, 2, 3]
    assert first.summary["n"] == 4 and first.summary["top1"] == pytest.approx(75.0)
    assert first.summary["task"] == "micro:R"


def test_interval_plot_draws_one_errorbar_series_per_hue():
    frame = pd.DataFrame({"task": ["A", "A", "R", "R"], "method": ["ZS", "TPT", "ZS", "TPT"],
                          "top1": [50.0, 55.0, 60.0, 58.0], "low": [45.0, 50.0, 55.0, 53.0],
                          "high": [55.0, 60.0, 65.0, 63.0]})
    ax = analysis.interval_plot(frame, x="task", y="top1", hue="method")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ZS", "TPT"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "R"]
    assert ax.get_ylabel() == "top1"


def test_interval_plot_accepts_an_estimate_a_rounding_error_outside_its_interval():
    frame = pd.DataFrame({"task": ["A"], "method": ["ZS"], "top1": [100.0], "low": [80.0], "high": [99.99999999999999]})
    analysis.interval_plot(frame, x="task", y="top1", hue="method")


# ------------------------------------------------------------------------------------------------
# views, confidence selection, one TPT step


def test_denormalize_inverts_the_normalisation_and_puts_channels_last():
    import torch
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    image = torch.rand(2, 3, 5, 7)
    views = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    out = analysis.denormalize(views, mean, std)
    assert out.shape == (2, 5, 7, 3)
    np.testing.assert_allclose(out, image.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_image_grid_frames_only_the_highlighted_panels():
    images = np.zeros((5, 4, 4, 3))
    fig = analysis.image_grid(images, titles=list("abcde"), ncols=3, highlight=[1, 4])
    axes = fig.axes
    assert len(axes) == 6 and [ax.get_title() for ax in axes[:5]] == list("abcde")
    framed = [k for k, ax in enumerate(axes[:5]) if ax.spines["left"].get_visible()]
    assert framed == [1, 4]


def _view_logits_with_known_entropies():
    """2 samples, 4 views, 3 classes, label 0. Sharp views (low entropy) predict class 1 for
    sample 0 and class 0 for sample 1; the flat views lean to the label."""
    import torch
    sharp_wrong, sharp_right, flat_right = [0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [1.5, 0.0, 0.0]
    logits = torch.tensor([[flat_right, sharp_wrong, flat_right, flat_right],
                           [flat_right, flat_right, sharp_right, flat_right]])
    return logits, np.array([0, 0])


def test_selection_curve_keeps_the_lowest_entropy_views():
    logits, labels = _view_logits_with_known_entropies()
    curve = analysis.selection_curve(logits, labels, [0.25, 1.0])
    assert curve["k"].tolist() == [1, 4]
    # rho=0.25 keeps only the sharp view: sample 0 wrong, sample 1 right; all views: both right
    assert curve["top1"].tolist() == [50.0, 100.0]
    assert (curve["low"] <= curve["top1"]).all() and (curve["top1"] <= curve["high"]).all()


def test_selected_prediction_at_rho_1_is_the_mean_softmax_of_all_views():
    import torch
    logits = torch.randn(3, 8, 5)
    torch.testing.assert_close(analysis.selected_prediction(logits, 1.0), logits.softmax(-1).mean(1))


def test_confident_views_compares_view0_with_the_most_confident_view():
    logits, labels = _view_logits_with_known_entropies()
    table = analysis.confident_views(logits, labels, selection_p=0.5)
    assert table["top_view"].tolist() == [1, 2]
    assert table["view0_correct"].tolist() == [True, True]
    assert table["top_correct"].tolist() == [False, True]
    assert table["kept_correct"].tolist() == [0.5, 1.0]      # 2 of 4 kept: the sharp one and a flat one
    assert (table["top_entropy"] < table["view0_entropy"]).all()


def test_view_logits_are_the_zero_shot_logits_of_evaluates_views(tiny, classnames, tmp_path):
    import torch

    import tptlib as tpt
    from PIL import Image
    from tptlib.data.base import Task
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)).save(path)
        paths.append((str(path), i))
    task = Task(name="toy", classnames=classnames, samples=paths, root=tmp_path)
    logits, labels = analysis.sample_view_logits(tiny, task, [2, 0], n_views=5, batch_size=1, progress=False)
    assert logits.shape == (2, 5, len(classnames)) and labels.tolist() == [2, 0]
    pred = tpt.predict(tiny, tpt.ZeroShot(), classnames, tpt.task_views(tiny, task, 0, n_views=5))
    torch.testing.assert_close(logits[1], pred.view_logits_before)


def test_tpt_trace_reproduces_predict_and_records_every_step(tiny, classnames):
    import torch

    import tptlib as tpt
    views = torch.randn(16, 3, 32, 32)
    method = tpt.TPT(steps=3, lr=0.01, selection_p=0.25)
    trace = analysis.tpt_trace(tiny, method, classnames, views)
    pred = tpt.predict(tiny, method, classnames, views)
    torch.testing.assert_close(trace.logits, pred.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(trace.logits_before, pred.logits_before, atol=1e-4, rtol=1e-4)
    assert trace.kept == pred.kept and len(trace.kept) == 4
    assert trace.losses[0] == pytest.approx(pred.loss, rel=1e-5) and len(trace.losses) == 4
    moves = trace.ctx_movement()
    assert len(moves) == 3 * trace.ctx.shape[1] and set(moves["step"]) == {1, 2, 3}
    # Adam's first step moves every coordinate by about lr (the gradient's sign), so each vector by lr * sqrt(W)
    first = moves[moves["step"] == 1]["change"]
    width = trace.ctx.shape[-1]
    np.testing.assert_allclose(first, 0.01 * width ** 0.5, rtol=0.05)


def test_interval_bars_put_each_error_bar_on_its_own_bar():
    import matplotlib.pyplot as plt
    frame = pd.DataFrame({"task": ["A", "B", "A", "B"], "method": ["m1", "m1", "m2", "m2"],
                          "top1": [50.0, 60.0, 70.0, 80.0], "low": [40.0, 55.0, 60.0, 70.0],
                          "high": [60.0, 65.0, 80.0, 85.0]})
    ax = analysis.interval_bars(frame, "task", "top1", "method")
    heights = [[bar.get_height() for bar in bars] for bars in ax.containers[:2]]
    assert heights == [[50.0, 60.0], [70.0, 80.0]]
    tops = sorted(round(float(seg[1][1]), 6) for lines in ax.collections for seg in lines.get_segments())
    assert tops == [60.0, 65.0, 80.0, 85.0]
    plt.close("all")


def test_view_table_marks_the_kept_views_and_show_views_frames_them():
    import matplotlib.pyplot as plt
    import torch
    logits, _ = _view_logits_with_known_entropies()
    table = analysis.view_table(logits[0], 0, ["a", "b", "c"], selection_p=0.25)
    assert table["kept"].tolist() == [False, True, False, False]
    assert table["pred"].tolist() == ["a", "b", "a", "a"] and table["correct"].tolist() == [True, False, True, True]
    fig = analysis.show_views(torch.zeros(4, 3, 6, 6), table, (0.5,) * 3, (0.2,) * 3, ncols=2)
    assert [k for k, ax in enumerate(fig.axes) if ax.spines["top"].get_visible()] == [1]
    assert fig.axes[1].get_title().startswith("v1 H=") and fig.axes[1].get_title().endswith("b ✗")
    plt.close(fig)


def test_prediction_agreement_counts_changed_top1_and_the_largest_logit_difference():
    a = make_run("micro:A", "tpt", LABEL, BEFORE, AFTER)
    changed = [0, 1, 0, 0, 1, 2, 0, 1]           # differs from AFTER at idx 2 and 6
    b = make_run("micro:A", "tpt", LABEL, BEFORE, changed)
    b.params["model"]["precision"] = "bf16"
    cmp = analysis.prediction_agreement(a, b)
    assert (cmp["n"], cmp["same_top1"], cmp["changed_idx"]) == (8, 6, [2, 6])
    assert cmp["same_top1_pct"] == pytest.approx(75.0)
    assert cmp["max_abs_logit_diff"] == pytest.approx(2.0)            # 2.0 moved to another class
    assert cmp["mean_abs_logit_diff"] == pytest.approx(2 * 4.0 / (8 * 3))
    # idx 2 (label 2): a says 1, b says 0, both wrong; idx 6 (label 0): a says 1, b says 0, only b right
    assert (cmp["a_only"], cmp["b_only"]) == (0, 1)
    assert ["model.precision", "(absent)", "bf16"] in cmp["differences"]
    assert (cmp["same_top1_before"], cmp["max_abs_logit_diff_before"]) == (8, 0.0)   # same initial prompt
    assert analysis.prediction_agreement(a, a)["same_top1"] == 8


def test_prediction_agreement_refuses_runs_of_different_tasks_or_listings():
    a = make_run("micro:A", "tpt", LABEL, BEFORE, AFTER)
    with pytest.raises(ValueError, match="different tasks.*'micro:A' against 'micro:R'"):
        analysis.prediction_agreement(a, make_run("micro:R", "tpt", LABEL, BEFORE, AFTER))
    b = make_run("micro:A", "tpt", LABEL, BEFORE, AFTER)
    a.params["task"]["samples"], b.params["task"]["samples"] = "0123", "4567"
    with pytest.raises(ValueError, match="sample listings"):
        analysis.prediction_agreement(a, b)
