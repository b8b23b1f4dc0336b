import json
import re

import nbformat
import pytest

from tptlib import workbook


def _notebook(path, params_source):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params_source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_code_cell("import json"), cell,
                nbformat.v4.new_code_cell("open('out.json', 'w').write(json.dumps({'limit': limit, 'seed': seed}))")]
    nbformat.write(nb, str(path))
    return path


def test_unknown_notebook_parameter_is_an_error(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb", "limit = 10\nseed = 0")
    assert workbook.notebook_parameters(nb) == {"limit": "10", "seed": "0"}
    with pytest.raises(workbook.UnknownParameterError, match=r"no parameter\(s\) \['limt'\]"):
        workbook.run_notebook(nb, tmp_path / "out", {"limt": 5}, html=False)
    assert not (tmp_path / "out" / "nb.ipynb").exists()


@pytest.mark.notebooks
def test_report_is_written_only_when_the_notebook_succeeds(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb", "limit = 10\nseed = 0")
    out = workbook.run_notebook(nb, tmp_path / "out", {"limit": 3}, html=True, cwd=tmp_path)
    assert json.loads((tmp_path / "out.json").read_text()) == {"limit": 3, "seed": 0}
    assert out.exists() and (tmp_path / "out" / "nb.html").exists() and (tmp_path / "out" / "nb.report.html").exists()
    bad = _notebook(tmp_path / "bad.ipynb", "limit = 10\nseed = 0")
    nbk = nbformat.read(str(bad), as_version=4)
    nbk.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('boom')"))
    nbformat.write(nbk, str(bad))
    with pytest.raises(Exception, match="boom"):
        workbook.run_notebook(bad, tmp_path / "out", {}, html=False, cwd=tmp_path)
    assert not (tmp_path / "out" / "bad.ipynb").exists()


@pytest.mark.notebooks
def test_notebooks_sharing_a_kernel_start_from_an_empty_namespace(tmp_path):
    first = _notebook(tmp_path / "first.ipynb", "limit = 10\nseed = 0")
    nb = nbformat.read(str(first), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                                              "left_behind = plt.figure()"))
    nbformat.write(nb, str(first))
    second = tmp_path / "second.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys\nprint(sorted(k for k in ('limit', 'seed', 'json', 'left_behind') if k in globals()),\n"
        "      sys.modules['matplotlib.pyplot'].get_fignums(), 'json' in sys.modules)")]), str(second))
    with workbook.Kernel(cwd=tmp_path) as kernel:
        workbook.run_notebook(first, tmp_path / "out", {"limit": 3}, kernel=kernel, html=False)
        pid = kernel.manager.provisioner.process.pid
        out = workbook.run_notebook(second, tmp_path / "out", {}, kernel=kernel, html=False)
        assert kernel.manager.provisioner.process.pid == pid          # the same kernel ran both
    assert json.loads((tmp_path / "out.json").read_text()) == {"limit": 3, "seed": 0}
    printed = nbformat.read(str(out), as_version=4).cells[0].outputs[0].text
    assert printed == "[] [] True\n"          # no name, no figure of the first; its imports stay loaded


def test_cli_refuses_an_unknown_parameter_before_running_anything(tmp_path, capsys):
    nb = _notebook(tmp_path / "nb.ipynb", "limit = 10\nseed = 0")
    with pytest.raises(workbook.UnknownParameterError):
        workbook.main([str(nb), "--out", str(tmp_path / "o"), "-p", "sed", "1"])


def test_run_dir_is_shared_by_identical_requests_and_differs_otherwise(tmp_path, tiny):
    import tptlib as tpt
    from tptlib.data.base import Task
    task = Task("micro:I", ["a", "b"], [], tmp_path)
    a = workbook.run_dir("runs", tiny, task, tpt.TPT(), limit=10)
    assert a == workbook.run_dir("runs", tiny, task, tpt.TPT(), limit=10)
    assert a != workbook.run_dir("runs", tiny, task, tpt.TPT(lr=1e-3), limit=10)
    assert a != workbook.run_dir("runs", tiny, task, tpt.TPT(), limit=20)


def test_paper_profile_needs_a_data_root(tmp_path):
    from fake_datasets import build_paper_root
    with pytest.raises(ValueError, match="data_root"):
        workbook.profile("paper")
    prof = workbook.profile("paper", data_root=str(build_paper_root(tmp_path, ["A", "eurosat"])), device="cpu")
    assert prof.model == "ViT-B-16" and prof.pretrained == "openai"
    assert prof.ood_tasks == ["A"] and prof.cross_tasks == ["eurosat"] and len(prof.missing) == 13


def test_index_shows_each_report_with_its_finding_and_headline_table(tmp_path):
    def report(name, finding, table_html):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}\n\nWhat it shows."),
                    nbformat.v4.new_code_cell("", metadata={"tags": ["index:run"]}, outputs=[
                        nbformat.v4.new_output("stream", name="stdout", text="profile micro: model m")]),
                    nbformat.v4.new_code_cell("", metadata={"tags": ["index:finding"]}, outputs=[
                        nbformat.v4.new_output("display_data", data={"text/markdown": finding, "text/plain": "<md>"})]),
                    nbformat.v4.new_code_cell("", metadata={"tags": ["index:headline"]}, outputs=[
                        nbformat.v4.new_output("execute_result", data={"text/html": table_html, "text/plain": "t"},
                                               execution_count=1)])]
        nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
        (tmp_path / f"{name}.report.html").write_text("<html></html>")

    report("01_first", "TPT **gains** 2 points.", "<table><tr><td>42.0</td></tr></table>")
    report("02_second", "Nothing moves.", "<table><tr><td>7.5</td></tr></table>")
    page = workbook.write_index(tmp_path).read_text()
    assert page.index("01_first") < page.index("02_second")
    assert "<strong>gains</strong>" in page and "Nothing moves." in page and "<td>42.0</td>" in page
    assert 'href="01_first.report.html"' in page and 'href="01_first.html"' not in page   # links only to what exists
    assert page.count("profile micro: model m") == 1


@pytest.mark.notebooks
def test_reports_run_without_in_kernel_progress_bars(tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    nb = _notebook(tmp_path / "nb.ipynb", "limit = 10\nseed = 0")
    book = nbformat.read(str(nb), as_version=4)
    book.cells.append(nbformat.v4.new_code_cell("import os; open('env.txt', 'w').write(os.environ.get('TQDM_DISABLE', ''))"))
    nbformat.write(book, str(nb))
    workbook.run_notebook(nb, tmp_path / "out", {}, html=False, cwd=tmp_path)
    assert (tmp_path / "env.txt").read_text() == "1"
    import os
    assert "TQDM_DISABLE" not in os.environ          # restored for the calling process


def test_exported_html_renders_math_as_mathml_and_loads_nothing_from_a_network(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# T\n\nInline $H(p) = -\\sum_c p_c \\log p_c$ and\n\n"
                                              "$$\\bar p = \\frac{1}{k} \\sum_{v \\in S} p_v$$\n\nprice `$HOME` stays."),
                nbformat.v4.new_code_cell("1", outputs=[nbformat.v4.new_output(
                    "display_data", data={"text/markdown": "temperature $\\tau$ = 12", "text/plain": "md"})])]
    path = tmp_path / "m.ipynb"
    nbformat.write(nb, str(path))
    for no_input in (False, True):
        page = workbook.export_html(path, tmp_path / "m.html", no_input=no_input).read_text()
        assert "$$" not in page and "$\\tau$" not in page and "\\frac" not in page
        assert page.count("<math") == 3 and "<mfrac>" in page
        assert "cdn" not in page.lower() and "mathjax" not in page.lower()
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", page)
    assert "$HOME" in page                                      # code spans are not math


def test_math_that_cannot_be_rendered_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"\\left\( x"):
        workbook.render_math("$$\\left( x$$")


def test_verdicts_follow_the_exact_test_when_the_bootstrap_interval_disagrees():
    import numpy as np
    a = np.array([True] * 5 + [True] * 100 + [False] * 195)       # 5 fixed, 0 broken out of 300
    b = np.array([False] * 5 + [True] * 100 + [False] * 195)
    row = workbook.paired(a, b)
    assert (row["a_only"], row["b_only"]) == (5, 0) and row["p_value"] == pytest.approx(0.0625)
    assert row["low"] > 0                                          # the bootstrap interval excludes 0 ...
    assert row["verdict"] == "not established"                     # ... the exact test decides
    assert workbook.verdict(20, 5, 0.004) == "better" and workbook.verdict(5, 20, 0.004) == "worse"
    assert "5 fixed / 0 broken, exact p = 0.062: not established" in workbook.describe(row)
    with pytest.raises(ValueError, match="a_only=-1"):
        workbook.verdict(-1, 2, 0.5)


def test_which_method_picks_the_best_per_kind_and_the_cheapest_inside_the_best_interval():
    import pandas as pd
    table = pd.DataFrame({"method": ["zero-shot", "TPT", "ZERO", "TDA", "DPE"],
                          "kind": ["fixed", "episodic", "episodic", "online", "online"],
                          "top1": [40.0, 41.0, 60.0, 58.0, 59.0], "low": [35.0, 36.0, 55.0, 53.0, 54.0],
                          "high": [45.0, 46.0, 65.0, 63.0, 64.0], "seconds": [0.01, 1.0, 0.2, 0.05, 0.3]})
    picks = workbook.which_method(table)
    assert picks["best"] == "ZERO" and picks["best_episodic"] == "ZERO" and picks["best_online"] == "DPE"
    assert picks["best_fixed"] == "zero-shot"
    assert picks["cheapest"] == "TDA"                   # 58.0 >= ZERO's low 55.0 and the cheapest there
    text = workbook.which_method_sentence(picks, "A")
    assert text.startswith("A: the best top-1 is ZERO (60.0% [55.0, 65.0], 0.2 s per image)")
    assert "the cheapest method whose top-1 lies inside the best's interval is TDA" in text and "0.25x" in text
    narrow = table.assign(low=table["top1"] - 0.5)      # nothing else inside the best's interval
    assert workbook.which_method(narrow)["cheapest"] == "ZERO"
    assert "no cheaper method reaches" in workbook.which_method_sentence(workbook.which_method(narrow), "A")
    with pytest.raises(ValueError, match="missing: seconds"):
        workbook.which_method(table.drop(columns="seconds"))
    with pytest.raises(ValueError, match="repeated: TPT"):
        workbook.which_method(pd.concat([table, table.iloc[[1]]]))


def test_step_effect_measures_margin_flip_and_toward_kept_per_sample():
    import pandas as pd
    import torch
    before = [[2.0, 1.0, 0.0], [3.0, 0.0, 1.0]]
    after = [[1.4, 1.6, 0.0], [3.1, 0.1, 1.1]]          # sample 0 flips to class 1; sample 1 moves all alike
    records = pd.DataFrame({"idx": [0, 1], "logits_before": before, "logits": after})
    views = torch.full((2, 10, 3), -5.0)
    views[:, :, 1] = 5.0                                # every view says class 1: the kept class
    e = workbook.step_effect(records, views, selection_p=0.1)
    assert e["margin"].tolist() == pytest.approx([1.0, 2.0])
    assert e["margin_change"].tolist() == pytest.approx([-1.2, 0.0])
    assert e["flipped"].tolist() == [True, False] and e["kept_class"].tolist() == [1, 1]
    assert e["toward_kept"].tolist() == [1.0, 0.0] and e["span"][1] == pytest.approx(0.0, abs=1e-12)
    assert e["span"][0] == pytest.approx(1.2) and e["reach"][0] == pytest.approx(1.2)   # class 0 -0.6, class 1 +0.6
    s = workbook.step_summary({"X": e}).loc["X"]
    assert s["step exceeds margin"] == 1 and s["toward kept (%)"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="do not match"):
        workbook.step_effect(records, views[:1], selection_p=0.1)


def test_gain_table_gives_tpts_share_of_zeros_gain_and_a_pooled_row():
    import numpy as np
    n = 100
    view0 = np.zeros(n, bool)
    zero = np.arange(n) < 20                    # ZERO +20 points
    tpt = np.arange(n) < 5                      # TPT +5 points
    table = workbook.gain_table({"A": {"view 0": view0, "kept views": zero, "ZERO": zero, "TPT": tpt},
                                 "R": {"view 0": view0, "kept views": view0, "ZERO": view0, "TPT": view0}})
    assert table.loc["A", "TPT / ZERO"] == pytest.approx(0.25)
    assert np.isnan(table.loc["R", "TPT / ZERO"])           # no gain of ZERO to share
    assert table.loc["pooled", "n"] == 2 * n and table.loc["pooled", "TPT / ZERO"] == pytest.approx(0.25)
    assert table.loc["A", "ZERO verdict"].endswith("better")


def test_every_published_peer_number_has_a_source_and_a_documented_status():
    from tptlib.analysis import published_peers
    peers = published_peers()
    assert len(peers) > 0 and peers["value"].between(0, 100).all()
    assert set(peers["status"]) <= {"verified", "restated"}          # the statuses the file's header defines
    assert peers["source"].str.strip().str.len().gt(0).all()
    assert set(peers["mode"]) <= {"episodic", "online", "none"} and set(peers["metric"]) <= {"top1", "ece"}
    assert not peers.duplicated(["backbone", "method", "task", "metric"]).any()


def test_published_shares_come_from_the_resource_files():
    shares = workbook.published_shares()
    # TPT paper Table 1 (zero-shot 47.87, TPT 54.77) and ZERO's figure (59.61) on ImageNet-A
    assert shares.loc["A", "TPT gain"] == pytest.approx(6.90, abs=0.005)
    assert shares.loc["A", "ZERO gain"] == pytest.approx(11.74, abs=0.005)
    assert 0.5 < shares.loc["A", "TPT / ZERO"] < 0.65
    assert "TPT paper Table 1" in shares.loc["A", "source"] and "ZERO" in shares.loc["A", "source"]


def test_analytic_cost_counts_vit_b16_and_grows_with_the_classes():
    image, text = workbook.open_clip_tower_flops("ViT-B-16")
    assert image / 1e9 == pytest.approx(35.1, rel=0.02)          # ViT-B/16 at 224 px: 17.6 GMACs
    small, large = workbook.tpt_cost(image, text, 10), workbook.tpt_cost(image, text, 1000)
    assert small["image GFLOPs"] == large["image GFLOPs"] == pytest.approx(64 * image / 1e9)
    assert large["text GFLOPs"] == pytest.approx(100 * small["text GFLOPs"])
    assert large["text share (%)"] > 50 > small["text share (%)"]
    with pytest.raises(ValueError, match="classes >= 1"):
        workbook.tpt_cost(image, text, 0)


@pytest.mark.parametrize("notebook", sorted(workbook.NOTEBOOK_DIR.glob("**/[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_exports_with_its_math_rendered_and_no_network(notebook, tmp_path):
    page = workbook.export_html(notebook, tmp_path / "page.html", no_input=True).read_text()
    text = re.sub(r"<(style|script)\b.*?</\1>", "", page, flags=re.S)           # the page's own CSS and scripts
    assert "$$" not in text and not re.search(r"\$\\[a-zA-Z]", text), notebook.name   # no raw LaTeX left
    assert "cdn" not in page.lower() and "mathjax" not in page.lower()
    source = nbformat.read(str(notebook), as_version=4)
    if any("$" in c.source for c in source.cells if c.cell_type == "markdown"):
        assert "<math" in page and "ns0:" not in page                           # MathML as HTML5 elements


def test_few_shot_takes_the_first_images_of_each_class_and_refuses_too_few(tmp_path):
    from tptlib.data.base import Task
    task = Task("micro:I", ["a", "b"], [(f"{i}.png", i % 2) for i in range(7)], tmp_path)
    assert workbook.few_shot(task, 2) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"fewer than 4 images of some classes: \{'b': 3\}"):
        workbook.few_shot(task, 4)


def test_a_saved_coop_context_is_what_tpt_reads_and_is_named_by_its_content(tmp_path):
    import torch

    from tptlib.methods.tpt_init import load_prompt_checkpoint
    ctx = torch.arange(8.0).reshape(2, 4)
    path = workbook.save_coop(ctx, tmp_path)
    assert torch.equal(load_prompt_checkpoint(path)["ctx"], ctx)
    assert workbook.save_coop(ctx + 1, tmp_path) != path


def test_the_longest_context_is_the_most_vectors_the_text_context_holds(clip, classnames):
    from tptlib.prompts import build_prompt_text
    n = workbook.longest_context(clip, classnames, 64)
    build_prompt_text(clip, classnames, n_ctx=n, ctx_init=None)
    with pytest.raises(ValueError, match="do not fit"):
        build_prompt_text(clip, classnames, n_ctx=n + 1, ctx_init=None)
    assert workbook.longest_context(clip, classnames, 2) == 2 < n
    with pytest.raises(ValueError, match="wanted must be >= 1"):
        workbook.longest_context(clip, classnames, 0)
