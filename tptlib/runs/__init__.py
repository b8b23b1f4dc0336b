"""Resumable evaluation runs: one SQLite row per sample, the parameters pinned in `run.json`.

    result = evaluate(clip, task, method, out="runs/micro-A-tpt")
    result.summary          # n, n_errors, top1, top5, top1_before, ... (accuracies in percent)
    result.records          # pandas DataFrame, one row per sample
    load_run("runs/micro-A-tpt")   # the same, later, without a model

The run folder
--------------
    run.json                    what the rows depend on: model, task, method and its config, seed,
                                n_views, limit, tptlib version, the SHA-256 of every input file
                                (weights, CoOp/CoCoOp checkpoint, DMN's CuPL file, split file), and
                                for an online method the stream order. A rerun with other values,
                                or with a file replaced at the same path, is refused.
    records.sqlite              table `records`, one row per sample (primary key: the sample index);
                                each batch of rows is written in one transaction, with its row in
                                table `batches` (time and peak memory) and, for an online method,
                                its rows in table `stream` (state updates). Table `run` holds
                                the digest of the parameters the rows were written under: records
                                are never adopted by a run.json they do not belong to.
    records.rank<r>.sqlite      rows of rank r of a multi-process (torchrun) run; rank 0 merges
                                them into records.sqlite at the end, and any run started later on
                                the folder merges what a killed job left. `load_run` reads all.
    run.log                     the run's log: start, resume point, error rows, the engine's
                                out-of-memory back-offs and fp32 retries, the final summary.
    lock                        the lock file (see Concurrency); it names the holding process.

Resume
------
A run that stops (killed, out of memory, Ctrl-C) leaves every finished batch in the store: an
interrupted batch's transaction is rolled back by SQLite, whole. Calling `evaluate` again with the
same parameters skips the samples that have a row and evaluates the rest. Because every sample's
views come from a generator seeded by (seed, sample index), the rows are the same whatever the
batch size, resume point, number of processes or limit: a larger `limit` extends a finished run
(not an online one, whose stream order is a permutation of its first `limit` samples).

Every argument and input is checked before the folder is created or touched, and a folder that is
not what it says (records without run.json, a run.json that cannot be read or was edited, a store
that is corrupt or from elsewhere, a link or a named pipe under one of the run's own file names) is
refused with nothing changed: see `tptlib.runs.folder`. Files are never written through a link;
run.json and a new store's layout are written whole and renamed into place (`tptlib.files`,
`store.create_store`).

Bad samples
-----------
A sample whose image is unreadable (`CorruptImageError`, whatever the reason) or absent
(`MissingImageError`), or whose views, logits, loss or gradient hold a NaN or an inf (a
`NonFiniteResult`), gets an error row (its `error` column says why) and the run goes on. Error rows
are counted in the summary (`n_errors`) and excluded from every accuracy and from the ECE, which
are over `n_scored = n - n_errors`. They are not retried on resume (fix the file, then start a
fresh folder).

Concurrency
-----------
One job per run folder. The process that drives the run (rank 0 under torchrun) holds an
exclusive `fcntl.flock` on `out/lock` from start to end; a second `evaluate` on the same folder
refuses at once with `RunLockedError`, naming the holder's pid and host. The kernel drops the lock
when its holder dies, even by SIGKILL, so a killed run never blocks its resume. (flock needs a
local or lock-aware file system; Linux NFS clients emulate it.)

Several processes (torchrun)
----------------------------
With `world_size > 1` (default: the RANK / WORLD_SIZE variables torchrun sets), rank r evaluates
the samples whose index i has i % world_size == r and writes them to its own store,
`records.rank<r>.sqlite`, so no two processes write one SQLite file. The ranks synchronise through
torch.distributed (a gloo group, created from torchrun's variables if the caller has not
initialised one): rank 0 takes the lock and checks run.json before any rank starts, and merges the
rank stores into records.sqlite after all have finished. The summary every rank returns is over
all ranks. A resumed run may use another number of processes.

Online methods
--------------
An online method (TDA, DMN-ZS) carries a state from one sample to the next. It sees the samples
in a permutation seeded by `stream_seed` (default: `seed`), recorded in run.json (`stream`) and so
in the parameter digest; each sample's state update is stored in table `stream` in its batch's
transaction, and a resumed run replays the stored updates into a fresh state before it goes on, so
it ends with the records of an uninterrupted run. Its samples run in blocks aligned to their
stream position; the method sees a block's samples alone, in order (an empty slot or an unreadable
image never enters its state). An online run cannot be shared out among processes.

The feature cache
-----------------
With `feature_cache` (or TPTLIB_FEATURE_CACHE), the view features of a sample are kept in a folder
shared by runs of the same model (weights pinned by digest), task and seed, and a sample found
there is not augmented or encoded again: see `tptlib.runs.features`. Features are computed with
the whole block of the run that needs them first, as an episodic run without a cache computes them.

Stored logits are float32 (little-endian raw bytes, `numpy.frombuffer(blob, "<f4")`); nothing in a
run folder is pickled.
"""
from .errors import RunError, RunLockedError, RunMismatchError
from .evaluation import evaluate
from .plan import DEFAULT_BATCH_SIZE, RunPlan, check_run_arguments, check_run_inputs, plan
from .params import run_params
from .rows import COLUMN_DOCS
from .summary import RunResult, load_run, scored_rows, summarize

__all__ = ["evaluate", "plan", "RunPlan", "load_run", "summarize", "scored_rows", "run_params", "check_run_arguments",
           "check_run_inputs", "RunResult", "RunError", "RunLockedError", "RunMismatchError",
           "DEFAULT_BATCH_SIZE", "COLUMN_DOCS"]
