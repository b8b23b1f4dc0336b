"""Concurrency: one job per run folder (a lock), and the processes of a multi-process run (ranks).

One job per run folder. The process that drives the run (rank 0 under torchrun) holds an
exclusive `fcntl.flock` on `out/lock` from start to end; a second `evaluate` on the same folder
refuses at once with `RunLockedError`, naming the holder's pid and host. The kernel drops the lock
when its holder dies, even by SIGKILL, so a killed run never blocks its resume. (flock needs a
local or lock-aware file system; Linux NFS clients emulate it.)

With `world_size > 1` (default: the RANK / WORLD_SIZE variables torchrun sets), the ranks
synchronise through torch.distributed (a gloo group, created from torchrun's variables if the
caller has not initialised one): rank 0 decides whether the run may start and tells every rank.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path

import torch

from ..files import UnsafeFileError, open_regular
from .errors import RunError, RunLockedError, RunMismatchError


class FolderLock:
    """Exclusive flock on `out/lock`; the file's text names the holder."""

    def __init__(self, out: Path):
        self.path = out / "lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)     # never through a link
        except UnsafeFileError as exc:
            raise RunError(f"the run folder {self.path.parent} cannot be used: {exc.strerror}, or use another "
                           "--out") from None
        except OSError as exc:
            raise RunError(f"cannot write in the run folder {self.path.parent} ({exc.strerror or exc}); a run "
                           "folder must be writable. Choose another --out (tpt show reads a run without "
                           "writing).") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "a process that is just starting"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({holder}). Two runs must not write one "
                f"folder: wait for it to finish, or stop it and run this command again (it resumes), "
                f"or choose another --out.") from None
        try:                          # the holder's name is for the message above; the flock excludes
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                         f"{datetime.datetime.now().isoformat(timespec='seconds')}".encode())
        except OSError:
            pass
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Ranks:
    """This process's place among the run's processes, and the collectives the run needs."""

    def __init__(self, rank: int | None, world_size: int | None):
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..world_size-1; got rank={self.rank}, world_size={self.world_size}")
        self.group = None
        self.owns_group = False

    def __enter__(self) -> "Ranks":
        if self.world_size == 1:
            return self
        import torch.distributed as dist
        if not dist.is_initialized():
            missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
            if missing:
                raise RunError(f"world_size={self.world_size} needs torch.distributed: start the processes "
                               f"with torchrun, or set {' and '.join(missing)} (and RANK, WORLD_SIZE) for each")
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size,
                                    timeout=datetime.timedelta(hours=12))
            self.owns_group = True
        elif dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise RunError(f"rank={self.rank}, world_size={self.world_size} disagree with the initialised "
                           f"process group (rank {dist.get_rank()} of {dist.get_world_size()})")
        if dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")   # small CPU messages, whatever the main backend
        return self

    def __exit__(self, *exc) -> None:
        if self.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist
            dist.barrier(group=self.group)

    def share_outcome(self, error: Exception | None) -> None:
        """Rank 0 tells every rank whether the run may start; a refusal is raised on all ranks."""
        if self.world_size == 1:
            if error is not None:
                raise error
            return
        import torch.distributed as dist
        text = "" if error is None else f"{type(error).__name__}\n{error}"
        data = torch.tensor(list(text.encode()), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.group)
        if self.rank != 0:
            data = torch.empty(int(size), dtype=torch.uint8)
        if int(size):
            dist.broadcast(data, src=0, group=self.group)
        if error is not None:
            raise error
        if int(size):
            kind, message = bytes(data.tolist()).decode().split("\n", 1)
            raise {"RunLockedError": RunLockedError, "RunMismatchError": RunMismatchError}.get(kind, RunError)(message)

