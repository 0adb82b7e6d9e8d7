"""The shell around a job that writes a store: checks before anything starts, the store lock,
signals, Ray's start-up (catalog/jobs.py's, re-exported here), and clean-up however the job ends.

Exit codes (pipelines/extract.py documents them for users):

    0    every shard ran                      1    some shard failed after its retries
    2    bad arguments, an unusable store (a file, not writable), or the store is locked
    3    writing the store failed mid-run (disk full, I/O error): complete shards are kept
    4    Ray did not start (or connect) within --ray-timeout
    130  interrupted by SIGINT (Ctrl-C)       143  stopped by SIGTERM

However the job ends, Ray is shut down (its workers die with it), every temporary file the job
or a killed worker left in the store is removed, and the lock is released, so the store is as the
last complete (shard, field) pairs left it and the same command resumes.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from catalog.jobs import DEFAULT_RAY_TIMEOUT_S, RayStartError, shutdown_ray, start_ray  # noqa: F401 (Ray's start-up: the job runner's)
from catalog.layout import leftovers

EXIT_OK, EXIT_SHARDS, EXIT_USAGE, EXIT_IO, EXIT_RAY = 0, 1, 2, 3, 4
WORKER_EXIT_WAIT_S = 10.0


class UsageError(Exception):
    """Bad arguments or inputs, found before anything is written: exit 2."""


@contextmanager
def usage_errors() -> Iterator[None]:
    """ValueError / FileNotFoundError raised in the block are the user's arguments: UsageError."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc


class StoreUnusable(Exception):
    """The store cannot be written at all (checked before anything starts): exit 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signum` says which (exit 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------------------------------------
# before anything starts
# ---------------------------------------------------------------------------------------------
def check_store(store: Path) -> None:
    """Create the store folder if needed and prove it is writable; StoreUnusable otherwise.

    A real write (not os.access, which says yes to root on a read-only mount's neighbours and
    knows nothing of quotas)."""
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise StoreUnusable(f"--store {store} is a file, not a directory")
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnusable(f"--store {store}: cannot create it: {_reason(exc)}") from None
    probe = store / f".write-test.tmp-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise StoreUnusable(f"--store {store} is not writable: {_reason(exc)}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def describe_os_error(exc: OSError) -> str:
    """One line: what could not be written and why, and what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = ("free space on the store's disk and run the same command again" if exc.errno == errno.ENOSPC
            else "fix the cause and run the same command again")
    return (f"error: writing the store failed: {where}{_reason(exc)}; the store holds every complete "
            f"shard and resumes; {hint}")


# ---------------------------------------------------------------------------------------------
# signals
# ---------------------------------------------------------------------------------------------
_RECEIVED: list[int] = []  # the signals that arrived (Ray's C++ waits turn ours into a bare KeyboardInterrupt)


def _raise_interrupted(signum, _frame) -> None:
    _RECEIVED.append(signum)
    raise Interrupted(signum)


def interrupt_signal(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: Interrupted's, else the last one our handler saw, else SIGINT."""
    if isinstance(exc, Interrupted):
        return exc.signum
    return _RECEIVED[-1] if _RECEIVED else signal.SIGINT


def install_handlers() -> None:
    """SIGINT and SIGTERM raise Interrupted in the main thread (again after ray.init, which sets
    its own SIGTERM handler)."""
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)


@contextmanager
def handlers_installed() -> Iterator[None]:
    """install_handlers for the block; the caller's handlers come back after it (tests call
    main() in process)."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_handlers()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Clean-up runs to its end even if the user presses Ctrl-C again."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# clean-up
# ---------------------------------------------------------------------------------------------
def rebuild_catalog(build: Callable[[], object]) -> None:
    """A job that ends early (a signal, a failure) still leaves a catalog that describes what is
    stored (the complete pairs; the rest reads `missing`), so `verify` passes and readers see
    the truth; a build that fails too (the disk is full) leaves the previous catalog whole."""
    try:
        build()
    except Exception as exc:  # said, not raised: the job's own error is the one to report
        print(f"warning: the catalog was not rebuilt ({type(exc).__name__}: {exc}); the previous one "
              f"is intact and the next run rebuilds it", file=sys.stderr)


def _pid_of(temp: Path) -> int | None:
    try:
        return int(temp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_leftovers(store: Path, local: bool = True) -> list[Path]:
    """Delete the temporary files in the store (the lock holder's to delete: no other writer runs).

    With a local Ray, a file named after a worker that is still exiting is deleted once that
    process is gone (up to WORKER_EXIT_WAIT_S), so it cannot write on after the sweep."""
    import shutil

    found = leftovers(store)
    if local:
        deadline = time.monotonic() + WORKER_EXIT_WAIT_S
        pids = {p for p in map(_pid_of, found) if p and p != os.getpid()}
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if _alive(p)}
            if pids:
                time.sleep(0.1)
        found = leftovers(store)
    for path in found:
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        except OSError:
            pass
    return found
