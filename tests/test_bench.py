"""`tpt bench` end to end on a tiny ViT: the JSON it writes, the agreement, the CLI mounting.
No timing assertions: speed claims come from running the benchmark, not from tests."""
import argparse
import json

import pytest

from _helpers import write_tiny_clip


@pytest.fixture(scope="module")
def tiny_model_name(tmp_path_factory):
    """The tiny ViT (conftest's `tiny_vit` architecture) registered with open_clip by name."""
    import open_clip
    path = write_tiny_clip(tmp_path_factory.mktemp("cfg"), "vit", "tptlib-bench-tiny-vit")
    open_clip.add_model_config(path)
    return path.stem


@pytest.mark.slow
def test_bench_writes_the_table_fields_and_the_paths_agree(tiny_model_name, tmp_path, capsys):
    from tptlib.bench import main
    out = tmp_path / "b.json"
    status = main(["--model", tiny_model_name, "--classes", "12", "--views", "16", "--samples", "3",
                   "--batch-size", "2", "--reference-samples", "2", "--device", "cpu", "--json", str(out), "--quiet"])
    assert status == 0
    res = json.loads(out.read_text())
    for key in ("engine", "reference", "ratio", "agreement", "flops", "device_peak", "limit", "config", "versions"):
        assert key in res
    assert res["engine"]["samples"] == 3 and res["reference"]["samples"] == 2
    for path in ("engine", "reference"):
        assert res[path]["samples_per_s"] > 0 and res[path]["peak_bytes"] >= 0
    assert res["ratio"] > 0
    assert res["agreement"]["samples"] == 2
    assert res["agreement"]["identical_argmax_share"] == 1.0
    assert res["agreement"]["identical_kept"] == 2
    assert res["agreement"]["max_abs_logit_diff"] < 1e-3
    assert res["flops"]["engine_per_sample"] > 0
    assert res["flops"]["reference_per_sample"] > res["flops"]["engine_per_sample"]
    assert res["device_peak"]["measured_flops"] > 0 and res["limit"]["engine_samples_per_s"] > 0
    assert res["engine"]["fast_text"] and res["engine"]["fast_image"]
    assert res["config"]["class_source"] == "ImageNet-A" and res["config"]["classes"] == 12
    stages = res["engine"]["stage_seconds"]
    assert set(stages) == {"image", "method"} and all(v > 0 for v in stages.values())
    assert sum(stages.values()) <= res["engine"]["seconds"] * 1.01      # inside the timed calls
    table = capsys.readouterr().out
    assert "speed-up engine / reference" in table and "identical argmax 2/2" in table
    assert "engine time per sample: image tower" in table and "GFLOP/s" in table


@pytest.mark.slow
def test_bench_with_the_jacobian_first_step_agrees_and_counts_fewer_flops(tiny_model_name, tmp_path, capsys):
    from tptlib.bench import main
    runs = {}
    for flag in ([], ["--jacobian"]):
        out = tmp_path / f"b{len(flag)}.json"
        assert main(["--model", tiny_model_name, "--classes", "12", "--views", "16", "--samples", "2",
                     "--batch-size", "2", "--reference-samples", "2", "--device", "cpu", "--json", str(out),
                     "--quiet", *flag]) == 0
        runs[bool(flag)] = json.loads(out.read_text())
    jac = runs[True]
    assert jac["engine"]["jacobian"] and not runs[False]["engine"]["jacobian"]
    assert jac["agreement"]["identical_argmax"] == 2 and jac["agreement"]["max_abs_logit_diff"] < 1e-3
    parts = jac["flops"]["parts"]
    assert parts["text_first_step_engine"] < parts["text_step_engine"] / 2     # no pass through the text tower
    assert jac["flops"]["engine_per_sample"] < runs[False]["flops"]["engine_per_sample"]
    assert "engine (batch 2, jacobian)" in capsys.readouterr().out


def test_more_than_200_classes_come_from_imagenet():
    from tptlib.bench import bench_classnames
    a, source_a = bench_classnames(200)
    i, source_i = bench_classnames(1000)
    assert source_a == "ImageNet-A" and len(a) == 200 and a[0] == "stingray"
    assert source_i == "ImageNet" and len(i) == 1000 and i[0] == "tench"


def test_bench_mounts_on_a_cli_and_refuses_bad_settings(tiny_model_name, capsys):
    from tptlib import bench
    parser = argparse.ArgumentParser(prog="tpt")
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--classes", "1000", "--views", "32"])
    assert args.func is bench.run_from_args and args.classes == 1000 and args.views == 32
    assert bench.main(["--model", tiny_model_name, "--views", "4", "--device", "cpu", "--quiet"]) == 2
    assert "keeps no view" in capsys.readouterr().err
