"""`tpt bench`: the batched engine against the faithful one-sample reference, in one process.

    command     the command line (`tpt bench`, `python -m tptlib.bench`): arguments, run, JSON file
    runner      both paths on the same views, interleaved: speed, memory, agreement
    inputs      the class names and the synthetic images both paths get
    flops       FLOPs per sample of each path, through the public pieces they run
    profiling   the kit: peak memory (RSS sampler, CUDA allocator), timers, FLOP counter, device peak
    report      the printed table
"""
from .command import add_parser, build_parser, main, run_from_args
from .inputs import bench_classnames
from .runner import run_bench

__all__ = ["main", "add_parser", "build_parser", "run_from_args", "run_bench", "bench_classnames"]
