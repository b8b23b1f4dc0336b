"""The workbook: what the notebooks run on and the code they share, one module per job.

    profiles   the `micro` and `paper` profiles: model, tasks, what is missing under data_root
    shared     the code every notebook calls (d2l's `#@save`, kept here once): `Book.run`, the shared
               run folders, the cached view logits
    verdicts   the one rule for paired comparisons (exact McNemar decides), stated once; which method
               to take from a table of methods (best, best per kind, cheapest inside the best's interval)
    measures   what TPT's step does per sample (03), the gain table and TPT's share of ZERO's gain (05)
    cost       TPT's cost per image counted analytically from the towers' shapes (06)
    coop       a CoOp context learnt on a few labelled images, the start of TPT + CoOp (04)
    runner     papermill with checked parameters (`python -m tptlib.workbook`)
    index      reports/index.html
    export     HTML that opens offline: math as MathML, no CDN

    import tptlib as tpt
    prof = tpt.workbook.profile("micro")
    book = tpt.workbook.Book(prof, prof.load_clip(), runs_dir="runs", limit=300)
    result = book.run("micro:A", tpt.TPT())
"""
from .coop import few_shot, longest_context, save_coop, train_coop
from .cost import cost_table, open_clip_tower_flops, tower_flops, tpt_cost
from .export import export_html, render_math, render_notebook_math
from .index import INDEX_TAGS, index_entry, write_index
from .measures import gain_table, mean_over_tasks, published_shares, step_effect, step_summary
from .profiles import PAPER_CROSS, PAPER_ID, PAPER_OOD, Profile, profile
from .runner import (NOTEBOOK_DIR, Kernel, UnknownParameterError, check_parameters, main, notebook_parameters,
                     report_environment, run_notebook)
from .shared import Book, cached_view_logits, run_dir
from .verdicts import (ALPHA, RULE, describe, listed, paired, paired_runs, verdict, which_method,
                       which_method_sentence, with_verdicts)

__all__ = [
    "few_shot", "longest_context", "save_coop", "train_coop",
    "cost_table", "open_clip_tower_flops", "tower_flops", "tpt_cost",
    "export_html", "render_math", "render_notebook_math",
    "INDEX_TAGS", "index_entry", "write_index",
    "gain_table", "mean_over_tasks", "published_shares", "step_effect", "step_summary",
    "PAPER_CROSS", "PAPER_ID", "PAPER_OOD", "Profile", "profile",
    "NOTEBOOK_DIR", "Kernel", "UnknownParameterError", "check_parameters", "main", "notebook_parameters",
    "report_environment", "run_notebook",
    "Book", "cached_view_logits", "run_dir",
    "ALPHA", "RULE", "describe", "listed", "paired", "paired_runs", "verdict", "which_method",
    "which_method_sentence", "with_verdicts",
]
