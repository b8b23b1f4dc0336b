import json

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
