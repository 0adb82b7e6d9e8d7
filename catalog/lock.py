"""One writer per store: the store lock.

Every command that writes a store (pipelines/extract.py, pipelines/sync_pass.py,
`python -m catalog splits --write`) holds `<store>/store.lock` for its whole run. The file is
created with O_CREAT | O_EXCL (so two jobs can never both create it) and holds JSON naming the
holder:

    {"host": "node3", "pid": 4242, "pid_start": 123456, "since": "2025-01-02T03:04:05Z",
     "since_epoch": 1735787045.0, "command": "pipelines/extract.py --dataset ...", "user": "ana",
     "token": "9f...", "heartbeat_s": 30}

While the job runs, a daemon thread touches the file's mtime every HEARTBEAT_S seconds (the
heartbeat). A second writer refuses at once (StoreLocked, naming the holder) unless the lock is
stale:

- holder on this host: stale when its pid no longer exists, or exists but started at another
  time than `pid_start` (the pid was reused; Linux /proc);
- holder on another host (a store shared over NFS): stale when the heartbeat is older than
  STALE_AFTER_S (10 missed heartbeats); the hosts' clocks must agree to within minutes;
- a lock file that is not valid JSON (its writer died mid-write) is stale once it is older
  than STALE_AFTER_S, else it is treated as held.

A stale lock is taken over and said so (a warning on stderr). Take-overs are serialised with an
flock on `<store>/.store.lock.guard`, so two jobs that find the same stale lock cannot both take
it. The lock is released (deleted, if it is still ours) when the `with` block ends, whatever
ends it; a job killed with SIGKILL leaves a lock that the next job finds stale.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import getpass
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = "store.lock"
GUARD_NAME = ".store.lock.guard"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class StoreLocked(RuntimeError):
    """Another live job holds the store; `holder` is its lock record."""

    def __init__(self, store: Path, holder: dict):
        self.store, self.holder = Path(store), holder
        super().__init__(f"store {store} is in use by another job: {describe(holder)}; wait for it to "
                         f"end (or, if that job is gone, delete {lock_path(store)})")


def lock_path(store: Path) -> Path:
    return Path(store) / LOCK_NAME


def describe(holder: dict) -> str:
    """The holder in words: pid, host, since when, command."""
    if not holder:
        return "an unreadable lock record"
    since = holder.get("since", "?")
    age = time.time() - holder["since_epoch"] if isinstance(holder.get("since_epoch"), (int, float)) else None
    ago = f" ({_duration(age)} ago)" if age is not None else ""
    return (f"pid {holder.get('pid')} on host {holder.get('host')} since {since}{ago}, "
            f"command: {holder.get('command', '?')}")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _pid_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the (comm) field
    except (OSError, ValueError, IndexError):
        return None


def _record(command: str | None) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
            "since": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "since_epoch": now, "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "user": _user(), "token": uuid.uuid4().hex, "heartbeat_s": HEARTBEAT_S}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def stale_reason(holder: dict | None, heartbeat_age: float) -> str | None:
    """Why the lock is stale (see the module doc), or None when its holder may be alive."""
    if holder is None:
        return (f"its record is unreadable and {heartbeat_age:.0f} s old" if heartbeat_age > STALE_AFTER_S
                else None)
    if holder.get("host") != socket.gethostname():
        return (f"its heartbeat is {heartbeat_age:.0f} s old (over {STALE_AFTER_S:.0f} s)"
                if heartbeat_age > STALE_AFTER_S else None)
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "it names no process"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} no longer exists"
    except PermissionError:
        pass  # alive, another user's
    started = _pid_start(pid)
    if started is not None and holder.get("pid_start") is not None and started != holder["pid_start"]:
        return f"process {pid} is another process now (the pid was reused)"
    return None


def _read(path: Path) -> tuple[dict | None, float] | None:
    """(record or None when unreadable, heartbeat age in s); None when there is no lock file."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        return (record if isinstance(record, dict) else None), age
    except ValueError:
        return None, age


def _create(path: Path, record: dict) -> bool:
    """Create the lock file with `record`; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(record, indent=1).encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


@contextmanager
def _guard(store: Path) -> Iterator[None]:
    """An exclusive flock serialising take-overs (held for milliseconds)."""
    fd = os.open(Path(store) / GUARD_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


class StoreLock:
    """The held lock: its record, the heartbeat thread, release()."""

    def __init__(self, store: Path, record: dict):
        self.store, self.path, self.record = Path(store), lock_path(store), record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="store-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the store went away or read-only: the job itself will say so

    def release(self) -> None:
        """Delete the lock file if it is still ours (a take-over by someone else is theirs)."""
        self._stop.set()
        found = _read(self.path)
        if found and found[0] and found[0].get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)


def acquire(store: Path, command: str | None = None, quiet: bool = False) -> StoreLock:
    """Take the store's lock, taking over a stale one; StoreLocked when a live job holds it."""
    store = Path(store)
    path = lock_path(store)
    record = _record(command)
    holder: dict | None = None
    unreadable = 0
    for _ in range(20):
        if _create(path, record):
            return StoreLock(store, record)
        found = _read(path)
        if found is None:
            continue  # released between our create and our read: try again
        holder, age = found
        reason = stale_reason(holder, age)
        if reason is None:
            if holder is None and unreadable < 5:  # unreadable but young: perhaps being written now
                unreadable += 1
                time.sleep(0.1)
                continue
            raise StoreLocked(store, holder or {})
        with _guard(store):
            again = _read(path)
            if again is None or (again[0] or {}).get("token") != (holder or {}).get("token"):
                continue  # someone else took it over first: look again
            path.unlink(missing_ok=True)
            taken = _create(path, record)
        if taken:
            if not quiet:
                print(f"warning: {path}: took over a stale lock ({reason}): {describe(holder or {})}",
                      file=sys.stderr)
            return StoreLock(store, record)
    raise OSError(errno.EAGAIN, "could not take the store lock (it changed hands 20 times)", str(path))


@contextmanager
def store_lock(store: Path, command: str | None = None) -> Iterator[StoreLock]:
    """Hold the store's lock for the block (released on any exit, exceptions included)."""
    lock = acquire(store, command)
    try:
        yield lock
    finally:
        lock.release()
