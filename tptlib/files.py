"""Files written safely: never through a link, temporary files created exclusively and renamed.

    check_regular(path)                    # refuses a link, a pipe or a folder where a file is due
    fd = open_regular(path, os.O_RDWR | os.O_CREAT)    # os.open that never follows a link or blocks
    write_atomic(path, data)               # path.tmp created exclusively, written, synced, renamed

A run folder or a cache folder is written by name: a symbolic link planted under one of those
names would make the writer change the file it points to, outside the folder, and a hard link
would do the same to the file it shares. A named pipe would block the writer forever. Each of these
is refused with `UnsafeFileError`, an `OSError` whose `strerror` says what the name is and how to
recover, so that callers that turn an `OSError` into a one-line refusal need nothing more.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class UnsafeFileError(OSError):
    """A name where a file is written that is a link, a hard link shared with another file, or not a
    regular file (a folder, a named pipe, a device, a socket)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _unsafe(path: Path, what: str, code: int = errno.ELOOP) -> UnsafeFileError:
    return UnsafeFileError(code, f"{path} is {what}; files are only written as regular files of their own, "
                                 f"never through a link. Nothing was written to it: remove it (rm '{path}') "
                                 f"and run again", str(path))


def check_regular(path, *, shared_ok: bool = False) -> None:
    """Refuse (`UnsafeFileError`) `path` if it exists and is not a regular file of its own: a symbolic
    link (even to a regular file), a hard link shared with another name (unless `shared_ok`), a
    folder, a named pipe, a device or a socket. A missing `path` passes."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise _unsafe(path, f"a symbolic link (to {target})")
    if not stat.S_ISREG(st.st_mode):
        raise _unsafe(path, _kind(st.st_mode), errno.EINVAL)
    if st.st_nlink > 1 and not shared_ok:
        raise _unsafe(path, f"a hard link: the same file has {st.st_nlink} names, and writing it would change "
                            "the others")


def open_regular(path, flags: int, mode: int = 0o644) -> int:
    """`os.open(path, flags)` that refuses (`UnsafeFileError`) a link or anything but a regular file
    of its own, and never blocks on a named pipe. Returns the descriptor (blocking mode)."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):    # a link; a pipe with no reader; a folder
            check_regular(path)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _unsafe(path, _kind(st.st_mode), errno.EINVAL)
        if st.st_nlink > 1:
            check_regular(path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path, data: bytes) -> None:
    """Write `data` to `path` all at once: into `<path>.tmp`, created exclusively (a leftover regular
    `.tmp` of an interrupted write is replaced; a link or pipe under that name is refused), synced,
    then renamed over `path` (which is replaced as a name: a link there is not followed). A failure
    (a full disk) removes the temporary file and leaves `path` as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    check_regular(tmp)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
