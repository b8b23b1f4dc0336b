"""What several test files build: fake EuroSAT roots, random micro-CLIP weights, the tiny open_clip
CLIPs, a run store's rows and the command line's refusals. Fixtures built from these live in
`conftest.py`; this module holds plain functions and constants, imported as `from _helpers import ...`.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tptlib import cli
from tptlib.data.catalog import _tpt_classnames

EUROSAT_NAMES = _tpt_classnames()["eurosat"]


def make_eurosat(root: Path, n: int = 12, corrupt=(), missing=()) -> Path:
    """A fake EuroSAT under `root`: n noise JPEGs listed in split_zhou_EuroSAT.json, sample i of
    class i % 10. Samples in `corrupt` are truncated files, those in `missing` are listed only."""
    folder = root / "eurosat"
    rng = np.random.default_rng(0)
    test = []
    for i in range(n):
        rel = f"class{i % 10}/img{i}.jpg"
        test.append([rel, i % 10, EUROSAT_NAMES[i % 10]])
        path = folder / "2750" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if i not in missing:
            Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, "JPEG")
        if i in corrupt:
            path.write_bytes(path.read_bytes()[:200])
    train = [[f"train/{y}.jpg", y, EUROSAT_NAMES[y]] for y in range(10)]
    (folder / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": train, "val": [], "test": test}))
    return root


def random_micro_weights(path: Path) -> Path:
    """The micro-CLIP architecture with seeded random weights, saved as safetensors."""
    import open_clip
    from safetensors.torch import save_file

    from tptlib import micro

    open_clip.add_model_config(micro.config_path())
    torch.manual_seed(0)
    model = open_clip.create_model(micro.MODEL_NAME, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def read_store(path: Path) -> list[tuple]:
    """(idx, pred, loss, logits bytes) of every row of one SQLite store, by index."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT idx, pred, loss, logits FROM records ORDER BY idx").fetchall()


#: summary fields measured (time, memory), which differ between two runs of the same samples
TIMING_KEYS = ("seconds_per_sample", "image_seconds_per_sample", "method_seconds_per_sample", "peak_mem_mib",
               "image_peak_mib", "method_peak_mib")


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """(exit status, standard error) of `tpt ARGS`, whether argparse or the command refused it."""
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str, *expected: str) -> None:
    assert code == 2, err
    assert err.startswith("tpt: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


# --- tiny open_clip CLIPs ----------------------------------------------------------------------

_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}

#: Small open_clip CLIP architectures (32 px) for algorithm tests, as open_clip model configs:
#: "resnet" (a ModifiedResNet image tower, attention pooling), "vit" (a two-block ViT, class-token
#: pooling) and "vit-shapes" (a one-block ViT with a 24-token text tower: the code paths of ViT-B/16
#: at a fraction of the cost; 24 tokens fit every prompt of the paper's 15 datasets, templates included).
TINY_CLIPS = {
    "resnet": {"embed_dim": 64,
               "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 16, "image_size": 32},
               "text_cfg": _TEXT},
    "vit": {"embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": _TEXT},
    "vit-shapes": {"embed_dim": 32,
                   "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                   "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}},
}


def tiny_clip(arch: str = "resnet", seed: int = 0):
    """A `Clip` of the tiny architecture `arch` (TINY_CLIPS) with weights seeded by `seed`, in fp32 on the CPU."""
    import open_clip

    from tptlib.clip import Clip, view0_transform
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIPS[arch])
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer("RN50" if arch == "resnet" else "ViT-B-16")
    name = {"resnet": "tiny", "vit": "tiny-vit"}.get(arch, f"tiny-{arch}")
    return Clip(model=model, tokenizer=tokenizer, preprocess=view0_transform(32), name=name, pretrained=None,
                device=torch.device("cpu"), precision="fp32", image_size=32,
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def write_tiny_clip(folder: Path, arch: str = "vit-shapes", name: str = "tiny-test-clip") -> Path:
    """The tiny architecture `arch` as an open_clip model config file, `folder/<name>.json` (`load_clip`
    and `open_clip.add_model_config` take its path)."""
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TINY_CLIPS[arch], indent=2))
    return path


# --- the command line in another process ----------------------------------------------------------

#: what `python -m tptlib.cli eval` imports before it runs: a forked command starts with them loaded
CLI_IMPORTS = ["torch", "open_clip", "tptlib", "tptlib.cli", "tptlib.cli.evaluate", "tptlib.runs", "tptlib.engine"]


def _cli_process(args: list[str], env: dict, cwd: str, out: str, err: str, file_size_limit: int | None) -> None:
    """The body of a forked command: this process's environment, folder and standard streams become
    the command's (and its largest writable file `file_size_limit` bytes: a full disk, as the
    command sees it), then `tpt ARGS` runs and its return value is the exit status."""
    import os
    import sys
    if file_size_limit is not None:
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for path, fd in ((out, 1), (err, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
    sys.argv = ["tpt", *args]
    sys.exit(cli.main(args))


class ForkedCommand:
    """`python -m tptlib.cli ARGS` as a process forked from a server that imported the command's
    libraries once (multiprocessing's `forkserver`, `CLI_IMPORTS`): a real process with its own pid,
    signals and exit status (-9 when SIGKILL ended it), without paying the imports again. The
    subset of `subprocess.Popen` the process tests use: `pid`, `poll()`, `send_signal()`,
    `communicate()` (standard output and error as text), `returncode`. `file_size_limit`: the
    command's largest writable file, in bytes (RLIMIT_FSIZE; a write past it fails as on a full disk).
    """

    _context = None

    def __init__(self, args: list[str], env: dict, cwd: Path, folder: Path, file_size_limit: int | None = None):
        import itertools
        import multiprocessing
        if ForkedCommand._context is None:
            ForkedCommand._context = multiprocessing.get_context("forkserver")
            ForkedCommand._context.set_forkserver_preload(CLI_IMPORTS)
        n = next(i for i in itertools.count() if not (folder / f"command{i}.out").exists())
        self._out, self._err = folder / f"command{n}.out", folder / f"command{n}.err"
        self._out.touch()
        self._process = ForkedCommand._context.Process(
            target=_cli_process,
            args=([str(a) for a in args], dict(env), str(cwd), str(self._out), str(self._err), file_size_limit))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        import os
        os.kill(self.pid, sig)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        import subprocess
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"tpt {self.pid}", timeout)
        read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""   # noqa: E731
        return read(self._out), read(self._err)
