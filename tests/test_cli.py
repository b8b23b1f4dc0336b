"""The `tpt` command: options, refusals with clean messages and exit status 2, runs, listings.

The tests call `tptlib.cli.main` in the test process (no interpreter start-up); one checks that
`python -m tptlib.cli` works. test_cli_vitb16.py runs a real-size model through the command.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from _helpers import make_eurosat
from tptlib import cli

REPO = Path(__file__).resolve().parents[1]
EUROSAT_SAMPLES, EUROSAT_CORRUPT = 6, (1,)      # conftest's data_root: 6 images, the second truncated


def eval_args(weights, root, out, *extra) -> list[str]:
    return ["eval", "--model", "micro", "--pretrained", str(weights), "--task", "eurosat", "--root", str(root),
            "--views", "10", "--out", str(out), "--no-progress", *extra]


# --- refusals ---------------------------------------------------------------------------------

def test_an_unknown_option_is_refused(weights, data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(eval_args(weights, data_root, tmp_path / "run", "--step", "3"))
    assert exc.value.code == 2
    assert "unrecognized arguments: --step 3" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unknown_method_is_refused(weights, data_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(eval_args(weights, data_root, tmp_path / "run", "--method", "tpt++"))
    assert exc.value.code == 2
    assert "invalid choice: 'tpt++'" in capsys.readouterr().err


def test_tuning_options_with_a_method_that_does_not_tune_are_refused(weights, data_root, tmp_path, capsys):
    code = cli.main(eval_args(weights, data_root, tmp_path / "run", "--method", "zeroshot", "--steps", "2", "--lr", "0.1"))
    assert code == 2
    assert capsys.readouterr().err.startswith(
        "tpt: error: --steps, --lr: --method zeroshot has no such parameter")


def test_a_selection_ratio_that_keeps_no_view_is_refused_before_the_run(weights, data_root, tmp_path, capsys):
    assert cli.main(eval_args(weights, data_root, tmp_path / "run", "--views", "8")) == 2
    assert "selection_p=0.1 keeps no view out of 8" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_option_needs_its_method(weights, data_root, tmp_path, capsys):
    assert cli.main(eval_args(weights, data_root, tmp_path / "run", "--coop-ckpt", str(weights))) == 2
    assert "method 'tpt' with these parameters is 'tpt+coop'; use --method tpt-coop" in capsys.readouterr().err


def test_open_clip_models_need_an_explicit_pretrained(data_root, tmp_path, capsys):
    code = cli.main(["eval", "--model", "RN50", "--task", "eurosat", "--root", str(data_root), "--out", str(tmp_path)])
    assert code == 2
    assert "--pretrained is required for --model RN50" in capsys.readouterr().err


def test_a_wrong_data_root_is_refused_before_any_work(weights, tmp_path, capsys):
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    code = cli.main(eval_args(weights, tmp_path / "data", tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tpt: error: EuroSAT: expected the CoOp split file split_zhou_EuroSAT.json")
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_for_another_architecture_is_refused(weights, data_root, tmp_path, capsys):
    code = cli.main(["eval", "--model", "RN50", "--pretrained", str(weights), "--task", "eurosat",
                     "--root", str(data_root), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tpt: error: ") and str(weights) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_checkpoint_file_is_refused(data_root, tmp_path, capsys):
    assert cli.main(eval_args(tmp_path / "nope.safetensors", data_root, tmp_path / "run")) == 2
    assert "nope.safetensors" in capsys.readouterr().err


# --- runs -------------------------------------------------------------------------------------

def test_eval_records_errors_resumes_and_refuses_other_parameters(weights, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(eval_args(weights, data_root, out, "--method", "zeroshot")) == 0
    report = capsys.readouterr().out
    assert "zeroshot on eurosat with micro-clip" in report
    assert "samples  6 of 6 recorded, 1 errors (excluded from accuracy)" in report

    assert cli.main(eval_args(weights, data_root, out, "--method", "zeroshot", "--batch-size", "3")) == 0
    with sqlite3.connect(out / "records.sqlite") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT idx), count(error) FROM records").fetchone() == (6, 6, 1)

    assert cli.main(eval_args(weights, data_root, out, "--method", "zeroshot", "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tpt: error: {out} holds a run with other parameters")
    assert "seed: 0 in the folder, 1 now" in err

    assert cli.main(["show", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["n"], summary["n_errors"], summary["method"]) == (6, 1, "zeroshot")


def test_compare_reports_agreement_and_signals_changed_predictions(weights, data_root, tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli.main(eval_args(weights, data_root, a, "--method", "tpt", "--batch-size", "1")) == 0
    assert cli.main(eval_args(weights, data_root, b, "--method", "tpt", "--batch-size", "5")) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b)]) == 0                    # batch size changes no prediction
    report = capsys.readouterr().out
    assert "5 samples both scored" in report and "same top-1   5/5 (100.00%)" in report
    assert "differ in" not in report                                     # batch size is not a run parameter

    assert cli.main(eval_args(weights, data_root, c, "--method", "tpt", "--ctx-init", "a drawing of")) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(c), "--json"]) == 1          # another prompt: other predictions
    cmp = json.loads(capsys.readouterr().out)
    assert ["method.config.ctx_init", "a photo of a", "a drawing of"] in cmp["differences"]
    assert cmp["n"] == 5 and cmp["same_top1"] < 5 and len(cmp["changed_idx"]) == 5 - cmp["same_top1"]
    assert cmp["max_abs_logit_diff_before"] > 0                          # the initial prompt differs too
    assert cmp["max_abs_logit_diff"] > 0

    assert cli.main(["compare", str(a), str(tmp_path / "nowhere")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_jacobian_flag_changes_speed_not_predictions(weights, data_root, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli.main(eval_args(weights, data_root, a, "--method", "tpt", "--lr", "0.05")) == 0
    assert cli.main(eval_args(weights, data_root, b, "--method", "tpt", "--lr", "0.05", "--jacobian")) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["same_top1"] == cmp["n"] == 5 and cmp["max_abs_logit_diff"] < 1e-4 and cmp["differences"] == []
    assert cli.main(eval_args(weights, data_root, tmp_path / "z", "--method", "zeroshot", "--jacobian")) == 2
    assert "--jacobian: --method zeroshot has no such parameter" in capsys.readouterr().err


def test_show_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["show", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_data_check_reports_problems_in_its_exit_status(data_root, tmp_path, capsys):
    assert cli.main(["data", "check", "--task", "eurosat", "--root", str(data_root)]) == 1
    assert "RESULT: PROBLEMS: 1 unreadable images" in capsys.readouterr().out
    clean = make_eurosat(tmp_path, n=10)
    assert cli.main(["data", "check", "--task", "eurosat", "--root", str(clean)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("RESULT: OK")
    assert cli.main(["data", "check", "--task", "A", "--root", str(tmp_path)]) == 2
    assert "expected 200 class folders" in capsys.readouterr().err


def test_split_files_can_live_in_their_own_folder(tmp_path, capsys):
    root = make_eurosat(tmp_path / "data", n=10)
    (tmp_path / "splits").mkdir()
    (root / "eurosat" / "split_zhou_EuroSAT.json").rename(tmp_path / "splits" / "split_zhou_EuroSAT.json")
    assert cli.main(["data", "check", "--task", "eurosat", "--root", str(root)]) == 2
    assert "split_zhou_EuroSAT.json" in capsys.readouterr().err
    assert cli.main(["data", "check", "--task", "eurosat", "--root", str(root),
                     "--split-dir", str(tmp_path / "splits")]) == 0
    capsys.readouterr()
    assert cli.main(["data", "check", "--task", "A", "--root", str(root), "--split-dir", str(tmp_path)]) == 2
    assert "split_dir" in capsys.readouterr().err


def test_models_and_tasks_are_listed(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("micro ")
    assert any(line.split()[:2] == ["RN50-quickgelu", "openai,"] for line in out.splitlines())
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert ["A", "200", "imagenet-a", "crop+flip"] in [line.split() for line in out.splitlines()]
    assert "micro:<set>" in out


def test_micro_build_hands_its_options_to_the_micro_trainer(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["micro", "build", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: tpt micro build")
    with pytest.raises(SystemExit) as exc:
        cli.main(["micro", "build", "--stpes", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --stpes 3" in capsys.readouterr().err


def test_python_m_tptlib_cli_runs():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "tptlib.cli", "eval", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "An interrupted run resumes when the same command is run again" in proc.stdout
