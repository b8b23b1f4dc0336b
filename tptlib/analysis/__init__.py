"""Analysis helpers the notebooks share, one module per job:

    labels    the papers' row and column labels, the published table's backbone names
    tables    run results as tables: the papers' layout, published numbers (TPT's table and its
              peers'), flips, per-class deltas, calibration bins, the views confidence selection
              kept, paired tests against a baseline, the accuracy-cost frontier
    compare   two runs of one task, sample by sample (what `tpt compare` prints)
    probes    the model on a few images: every view's logits, confidence selection, TPT's steps
    plots     figures: image grids and galleries, points and bars with precomputed intervals

Tables read run results (`tpt.evaluate` / `tpt.load_run`) or their `records` and return pandas
DataFrames, so that a notebook cell is one call and one table. Accuracies are in percent, as in
the papers; error rows (unreadable images) are left out everywhere, as in `summary`.

    import tptlib as tpt
    frame = tpt.analysis.run_frame([zs, ens, tpt_run])              # one row per run
    tpt.analysis.paper_table(frame, ["I"], ["A", "V", "R", "K"])    # Table 1 layout
"""
from .compare import compare_runs, prediction_agreement
from .labels import METHOD_LABELS, METHOD_ORDER, PAPER_BACKBONES, method_label, paper_backbone, task_label
from .plots import (denormalize, gallery, image_grid, interval_bars, interval_plot, reliability_diagram, show_views,
                    view0_image)
from .probes import (TPTTrace, confident_views, sample_view_logits, selected_prediction, selection_curve, tpt_trace,
                     view_table)
from .tables import (FLIP_KINDS, flip_counts, flip_kind, frontier, head, interval_table, kept_views, method_table,
                     paired_against, paper_table, per_class_deltas, published_peers, published_results, reliability,
                     run_frame)

__all__ = [
    "compare_runs", "prediction_agreement",
    "METHOD_LABELS", "METHOD_ORDER", "PAPER_BACKBONES", "method_label", "paper_backbone", "task_label",
    "denormalize", "gallery", "image_grid", "interval_bars", "interval_plot", "reliability_diagram", "show_views",
    "view0_image",
    "TPTTrace", "confident_views", "sample_view_logits", "selected_prediction", "selection_curve", "tpt_trace",
    "view_table",
    "FLIP_KINDS", "flip_counts", "flip_kind", "frontier", "head", "interval_table", "kept_views", "method_table",
    "paired_against",
    "paper_table", "per_class_deltas", "published_peers", "published_results", "reliability", "run_frame",
]

#: the former name of `sample_view_logits`, which `tptlib.workbook` still imports; not public (the
#: workbook's own `view_logits` is), and removed once that import is renamed
view_logits = sample_view_logits
