"""The one job runner: a job's tasks on Ray (a private local Ray, or a cluster), or a local worker.

    runner = Runner(address=None, workers=4, timeout_s=120, mode="auto")
    runner.run(extract_shard, [Task("folder-000003", (store, "folder", 3, ...))], desc="folder audio",
               unit="shard", max_retries=3, on_result=keep, on_failure=write_error_rows)
    runner.close()

Extraction and the probe (pipelines/), the sync pass and scoring (training/sync/) run their tasks
through it; it lives in catalog/ so both sides of the layers may import it.

Starting Ray, one way. With an address (--address, or RAY_ADDRESS, which `ray job submit` sets)
the job attaches to that cluster. Otherwise it starts a private local Ray: address="local" (never
someone else's cluster on a shared host), num_cpus = `workers` or every CPU, no dashboard, the
workers' output shown by the driver; the workers import the installed package, and only the test
hook's FAULT_ENV is passed to them. Ray must start (or connect) within `timeout_s`: `start_ray`
says why that can run out on a loaded machine; then RayStartError. `after_start` runs after every
start attempt (ray.init sets its own SIGTERM handler: extract.py puts its own back).

Retries that end. Ray counts retries of a task killed for memory apart from `max_retries` (the
`task_oom_retries` system config, -1 = forever by default), and a cluster's config is not the
job's to set. So every task is submitted with `max_retries=0` (which also turns Ray's OOM retries
off: Ray gives a task `task_oom_retries` only when `max_retries != 0`) and `retry_exceptions=False`,
and the driver retries it itself, at most `max_retries` times, when `classify` says the cause was
outside the task's code: a worker killed for memory, a worker or node that died, a Ray system
error. An exception raised by the task's own code is not retried (it would fail the same way).
A task that fails for good goes to `on_failure(task, cause)`, which writes the caller's error rows.

Without Ray. A job of one task (one shard, one video) does not pay Ray's start-up (20-40 s): in
mode "auto", with no address, no RAY_ADDRESS and no Ray already running in this process, its task
runs in a local worker process (said once on stderr); mode "never" runs every task there, one at
a time, and "always" always uses Ray. The local worker is a child Python (multiprocessing
"spawn": nothing of the driver's threads or state is inherited) that runs the same `call_task`
a Ray worker runs: the same function, the same fault hook, the same error handling (an exception
is "the task raised ...", not retried; a worker that died is retried, bounded, by cause). Why a
child process and not the driver itself: a signal must not land inside the task's code. Ctrl-C
during `import mediapipe` in the driver came back as ImportError, which the per-utterance error
handling recorded as every utterance's face failure, and the job ended 0 with false error rows
that a re-run keeps (measured). The child ignores SIGINT (Ctrl-C reaches the whole process group)
and dies with the driver (PR_SET_PDEATHSIG on Linux); the driver handles the signal as after a
Ray job: it kills the child, waits for it, and its clean-up runs (extract.py: the child's
temporary files removed once it is gone, lock released, catalog rebuilt). A crash of the child
(a segfault, the kernel's OOM killer) is a dead worker, as on Ray. If the driver itself is
killed, the lock names a dead pid and the next run takes it over with a warning (catalog/lock.py),
temporary files are swept by the next extraction (pipelines/job.remove_leftovers), complete pairs
are kept and the same command resumes. A job whose tasks write nothing that outlives a swallowed
interrupt (score.py: rows come back, the driver writes the outputs after the job) may ask for
`in_process`: its tasks then run in the driver itself (no child start-up, no second model load),
and a signal that arrived during a task ends the job after it, dropping that task's result.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from features.quiet import VERBOSE_ENV

DEFAULT_RAY_TIMEOUT_S = 120.0
GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"  # Ray's own knob (ray/_private/node.py)
MODES = ("auto", "always", "never")  # where tasks run: see the module doc
FAULT_ENV = "UNISYNC_FAULT_SHARDS"  # tests: "<task name>[:oom],..." tasks whose worker dies ("folder-3")
OOM_CAP_BYTES = 6 << 30  # the `oom` fault stops growing here (then exits) if nothing killed it
JOB_SUBMISSION_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the driver
WORKER_ENV = (FAULT_ENV, VERBOSE_ENV)  # what a job's workers inherit from the driver's environment


class RayStartError(Exception):
    """Ray did not start or connect in time: exit 4."""


class _StartTimeout(BaseException):
    """Raised into ray.init by SIGALRM: not an Exception, so Ray's own retry loops let it pass."""


_ALARM = {"fired": False}  # set by the SIGALRM handler: the alarm can be swallowed inside ray.init


@dataclass(frozen=True)
class Task:
    """One task: `name` in messages and the fault hook ("folder-000003"), `fn(*args)` its work,
    `size` its share of the progress bar (e.g. the videos of a probe batch)."""

    name: str
    args: tuple = ()
    size: int = 1


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
class Runner:
    """Runs jobs' tasks (see the module doc); starts Ray at most once, when a job first needs it."""

    def __init__(self, address: str | None = None, workers: int | None = None,
                 timeout_s: float = DEFAULT_RAY_TIMEOUT_S, mode: str = "auto",
                 after_start: Callable[[], None] | None = None, in_process: bool = False):
        if mode not in MODES:
            raise ValueError(f"--ray must be one of {', '.join(MODES)}, got {mode!r}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.workers, self.timeout_s, self.mode, self.after_start = workers, timeout_s, mode, after_start
        self.in_process = in_process  # without Ray: the driver itself, not a local worker (module doc)
        self._ray = None  # the ray module once started (or found running)
        self._started = False  # this runner called ray.init (so close() shuts it down)
        self._local: LocalWorker | None = None
        self._said_local = False

    # -- where a job runs ------------------------------------------------------------------------
    def runs_local(self, n_tasks: int) -> bool:
        """Whether a job of `n_tasks` tasks runs in the local worker process, not on Ray (module doc)."""
        if self.mode != "auto":
            return self.mode == "never"
        return n_tasks <= 1 and not self.address and not _ray_running()

    def has_gpu(self, n_tasks: int) -> bool:
        """Whether a job of `n_tasks` tasks can ask for GPUs (Ray's cluster has one); in the local
        worker, never (the task itself uses the GPU it sees)."""
        if self.runs_local(n_tasks):
            return False
        return self.ray().cluster_resources().get("GPU", 0) > 0

    def ray(self):
        """The ray module, Ray started (or connected) first if it is not running yet."""
        if self._ray is None:
            import ray

            if ray.is_initialized():  # e.g. a test's shared Ray: use it, leave it running
                self._ray = ray
            else:
                self._ray = self._start()
                self._started = True
        return self._ray

    def _start(self):
        env = {k: v for k, v in os.environ.items() if k in WORKER_ENV}  # the venv carries the code
        if self.address:  # a cluster (or `ray job submit`, whose working dir carries the code)
            init = lambda: _ray_module().init(  # noqa: E731
                address=self.address, log_to_driver=True, **({"runtime_env": {"env_vars": env}} if env else {}))
        else:  # a private local Ray: never attach to someone else's cluster on a shared host
            init = lambda: _ray_module().init(  # noqa: E731
                address="local", num_cpus=self.workers or os.cpu_count(), include_dashboard=False,
                runtime_env={"env_vars": env}, log_to_driver=True)
        try:
            return start_ray(init, self.timeout_s, local=not self.address)
        finally:
            if self.after_start is not None:
                self.after_start()

    def close(self) -> None:
        """Stop the local worker and shut down the Ray this runner started (its workers die with
        it); idempotent."""
        if self._local is not None:
            self._local.stop()
            self._local = None
        if self._started and self._ray is not None:
            shutdown_ray(self._ray)
        self._ray, self._started = None, False

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running a job ---------------------------------------------------------------------------
    def run(self, fn: Callable, tasks: Iterable[Task], *, desc: str, unit: str = "task",
            max_retries: int = 0, num_cpus: float = 1, num_gpus: float = 0,
            on_result: Callable[[Task, Any], None] | None = None,
            on_failure: Callable[[Task, str], None] | None = None,
            postfix: Callable[[], dict] | None = None) -> int:
        """Run `fn(*task.args)` for every task, at most `workers` (else every CPU Ray offers) at
        once; returns how many failed for good. Each result goes to `on_result(task, result)`,
        each final failure to `on_failure(task, cause)` (cause: "<unit> failed after N attempt(s):
        <why>"); `postfix()` feeds the progress bar's figures after each task."""
        from tqdm import tqdm

        tasks = list(tasks)
        if not tasks:
            return 0
        local = self.runs_local(len(tasks))
        if local:
            self._say_local(len(tasks), unit)
        bar = tqdm(total=sum(t.size for t in tasks), desc=desc, unit=unit)
        on_result = on_result or (lambda task, result: None)
        failed = 0

        def fail(task: Task, attempts: int, cause: str) -> None:
            nonlocal failed
            failed += 1
            if on_failure is not None:
                on_failure(task, f"{unit} failed after {attempts} attempt(s): {cause}")

        try:
            if local and self.in_process:
                self._run_in_process(fn, tasks, bar, on_result, fail, postfix)
            elif local:
                self._run_local(fn, tasks, bar, unit, max_retries, on_result, fail, postfix)
            else:
                self._run_ray(fn, tasks, bar, unit, max_retries, num_cpus, num_gpus, on_result, fail, postfix)
        finally:
            bar.close()
        return failed

    def _say_local(self, n_tasks: int, unit: str) -> None:
        if self._said_local:
            return
        self._said_local = True
        why = ("--ray never" if self.mode == "never" else
               f"one {unit}: no Ray start-up; --ray always or --address runs it on Ray")
        where = "this process" if self.in_process else "a local worker process"
        print(f"running {'every' if n_tasks > 1 else 'the'} {unit} in {where} ({why})", file=sys.stderr)

    @staticmethod
    def _run_in_process(fn, tasks, bar, on_result, fail, postfix) -> None:
        """Each task in turn in the driver: the same function and error handling, nothing to
        retry (a crash is the driver's). A signal that arrived during a task ends the job after
        it even if the task's own error handling swallowed it (the task's result is dropped)."""
        for task in tasks:
            with _signals_noted() as noted:
                try:
                    result = call_task(task.name, fn, task.args)
                except Exception as exc:  # KeyboardInterrupt (SIGINT / SIGTERM) goes to the caller
                    result, cause = None, f"the task raised {type(exc).__name__}: " \
                                          f"{(str(exc).splitlines() or [''])[0][:300]}"
                else:
                    cause = None
            if noted:
                noted[0]()  # the handler's own way out (KeyboardInterrupt, Interrupted, ...)
            if cause is None:
                on_result(task, result)
            else:
                fail(task, 1, cause)
            _advance(bar, task, postfix)

    def _run_local(self, fn, tasks, bar, unit, max_retries, on_result, fail, postfix) -> None:
        """Each task in turn in the local worker (restarted after it dies), retried as on Ray."""
        for task in tasks:
            attempt = 0
            while True:
                if self._local is None:
                    self._local = LocalWorker()
                ok, value, died = self._local.run(task.name, fn, task.args)
                if ok:
                    on_result(task, value)
                    break
                if died:
                    self._local = None  # a new one for the next attempt or task
                retry = died
                if retry and attempt < max_retries:
                    _say_retry(unit, task, attempt, max_retries, value)
                    attempt += 1
                    continue
                fail(task, attempt + 1, value)
                break
            _advance(bar, task, postfix)

    def _run_ray(self, fn, tasks, bar, unit, max_retries, num_cpus, num_gpus, on_result, fail, postfix) -> None:
        ray = self.ray()
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0,
                            retry_exceptions=False)(call_task).options(name=getattr(fn, "__name__", "task"))
        limit = self.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        pending = [(task, 0) for task in tasks]
        in_flight: dict = {}
        while pending or in_flight:
            while pending and len(in_flight) < limit:
                task, attempt = pending.pop(0)
                in_flight[remote.remote(task.name, fn, task.args)] = (task, attempt)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            task, attempt = in_flight.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:
                retry, cause = classify(exc)
                if retry and attempt < max_retries:
                    _say_retry(unit, task, attempt, max_retries, cause)
                    pending.append((task, attempt + 1))
                    continue
                fail(task, attempt + 1, cause)
            else:
                on_result(task, result)
            _advance(bar, task, postfix)


@contextmanager
def _signals_noted():
    """For the block, SIGINT / SIGTERM handlers that are Python callables also note the signal:
    the list yielded gets a callable that re-delivers it to the handler."""
    noted: list[Callable[[], None]] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def note(signum, frame):
        handler = old[signum]
        noted[:] = [lambda: handler(signum, None)]
        handler(signum, frame)

    for s, h in old.items():
        if callable(h):
            signal.signal(s, note)
    try:
        yield noted
    finally:
        for s, h in old.items():
            if callable(h):
                signal.signal(s, h)


def _say_retry(unit: str, task: Task, attempt: int, max_retries: int, cause: str) -> None:
    print(f"{unit} {task.name} attempt {attempt + 1} failed: {cause}; retrying ({max_retries - attempt} left)",
          file=sys.stderr)


def _advance(bar, task: Task, postfix: Callable[[], dict] | None) -> None:
    bar.update(task.size)
    if postfix is not None:
        bar.set_postfix(postfix())


def _ray_module():
    import ray

    return ray


def _ray_running() -> bool:
    """Ray is initialised in this process (without importing it when it was never imported)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


# ---------------------------------------------------------------------------------------------
# the local worker: one child process, tasks one at a time
# ---------------------------------------------------------------------------------------------
class LocalWorker:
    """A spawned child Python that runs tasks sent over a pipe (module doc, "Without Ray")."""

    POLL_S = 0.2

    def __init__(self):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork: the driver's threads and locks stay behind
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child,), name="unisync-local-worker", daemon=True)
        self.process.start()
        child.close()

    def run(self, name: str, fn: Callable, args: tuple) -> tuple[bool, Any, bool]:
        """(True, result, False), or (False, cause in words, whether the child died: a retryable
        cause, as a dead Ray worker). An interrupt of the driver (SIGINT / SIGTERM: KeyboardInterrupt
        in this wait) kills the child first, so nothing of the task writes on."""
        try:
            try:
                self._conn.send((name, fn, args))
                while not self._conn.poll(self.POLL_S):
                    if not self.process.is_alive():
                        break
                reply = self._conn.recv() if self._conn.poll() else None
            except (EOFError, OSError):  # the pipe broke: the child is gone
                reply = None
        except BaseException:
            self.kill()
            raise
        if reply is None:
            self.kill()
            return False, _death_cause(self.process.exitcode), True
        if reply[0] == "ok":
            return True, reply[1], False
        return False, f"the task raised {reply[1]}: {(reply[2].splitlines() or [''])[0][:300]}", False

    def kill(self) -> None:
        """Kill the child and wait for it (its pid is gone before any clean-up looks)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self._conn.close()

    def stop(self) -> None:
        """Let the child finish (it exits at once between tasks); kill it if it does not."""
        if self.process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self.process.join(timeout=10)
        self.kill()

    @property
    def pid(self) -> int | None:
        return self.process.pid


def _serve(conn) -> None:
    """The child's loop: run each task sent, reply ("ok", result) or ("raised", type, message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops us
    _die_with_parent()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        name, fn, args = message
        try:
            reply = ("ok", call_task(name, fn, args))
        except Exception as exc:  # the task's own failure: in words (its class may not pickle)
            reply = ("raised", type(exc).__name__, str(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # a result that does not pickle
            conn.send(("raised", type(exc).__name__, f"the task's result could not be sent back: {exc}"))


def _die_with_parent() -> None:
    """SIGKILL this process when the driver dies (Linux), so no orphan writes the store on."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _death_cause(exitcode: int | None) -> str:
    how = (f"killed by {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0
           and -exitcode in signal.valid_signals() else f"exit code {exitcode}")
    return f"the worker process died ({how}; e.g. the kernel's OOM killer, or a crash)"


# ---------------------------------------------------------------------------------------------
# the task: the fault hook, then the work
# ---------------------------------------------------------------------------------------------
def call_task(name: str, fn: Callable, args: tuple) -> Any:
    """The body of every task, on a Ray worker or the local one: `fn(*args)`, after the fault hook."""
    inject_fault(name)
    return fn(*args)


def inject_fault(name: str) -> None:
    """Make this process die, when a test asks (FAULT_ENV): at once (`<name>`, as after SIGKILL),
    or by growing its memory until Ray's memory monitor kills it (`<name>:oom`). `folder-3` also
    names the task `folder-000003`."""
    wanted = dict((s.strip().split(":") + [""])[:2] for s in os.environ.get(FAULT_ENV, "").split(",") if s.strip())
    mode = next((m for entry, m in wanted.items() if _same_name(entry, name)), None)
    if mode is None:
        return
    if mode == "oom":
        import numpy as np

        hog = []
        while sum(a.nbytes for a in hog) < OOM_CAP_BYTES:
            hog.append(np.ones(64 << 20, np.uint8))  # touched pages: real resident memory
            time.sleep(0.05)
    os._exit(137)  # no exception, no cleanup: the process is gone


def _same_name(entry: str, name: str) -> bool:
    """`folder-3` == `folder-000003`: a trailing number compares as a number."""
    if entry == name:
        return True
    a, _, m = entry.rpartition("-")
    b, _, n = name.rpartition("-")
    return a == b and m.isdigit() and n.isdigit() and int(m) == int(n)


def classify(exc: BaseException) -> tuple[bool, str]:
    """(retry?, cause in words) for an exception `ray.get` raised for a task."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    rex = sys.modules.get("ray.exceptions")
    if rex is not None:
        if isinstance(exc, rex.OutOfMemoryError):
            return True, ("out of memory: Ray's memory monitor killed the worker (the node ran short of "
                          f"memory; fewer --workers leave each more) [{first}]")
        if isinstance(exc, rex.WorkerCrashedError):
            return True, f"the worker process died (killed or crashed; e.g. the kernel's OOM killer) [{first}]"
        if isinstance(exc, getattr(rex, "NodeDiedError", ())) or isinstance(exc, getattr(rex, "ActorDiedError", ())):
            return True, f"the node running the worker died [{first}]"
        if isinstance(exc, (rex.RaySystemError, rex.ObjectLostError, rex.TaskUnschedulableError)):
            return True, f"Ray system error ({type(exc).__name__}) [{first}]"
        if isinstance(exc, rex.RayTaskError):
            exc = exc.cause if getattr(exc, "cause", None) is not None else exc
    return False, f"the task raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


# ---------------------------------------------------------------------------------------------
# Ray's start-up, bounded
# ---------------------------------------------------------------------------------------------
def start_ray(init: Callable[[], object], timeout_s: float, local: bool):
    """Call `init` (a ray.init) within `timeout_s` seconds; returns the ray module.

    Ray's local start-up waits up to RAY_gcs_server_port_wait_time_s (30 s by default) for its GCS
    and a fixed 30 s for the raylet to register (ray/_private/node.py); on a loaded machine either
    can run out. The first is set to the time left; a start that fails on a timeout is retried
    while time is left; a SIGALRM ends the attempt when the whole budget is spent. The alarm's
    exception can be lost inside Ray (raised while a class body of an import runs, Python turns it
    into the RuntimeError "Error calling __set_name__", which Ray logs and goes on), so a start
    during which the alarm fired counts as out of time even when ray.init returns: the limit holds.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    attempt, last, timed_out = 0, None, True
    if threading.current_thread() is not threading.main_thread():  # no signals: Ray's own waits bound it
        init()
        return ray
    old_alarm = signal.signal(signal.SIGALRM, _alarm)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            attempt += 1
            ours = local and GCS_WAIT_ENV not in os.environ
            if ours:
                os.environ[GCS_WAIT_ENV] = str(max(1, int(left)))
            _ALARM["fired"] = False
            signal.setitimer(signal.ITIMER_REAL, left)
            try:
                init()
                if not _ALARM["fired"]:
                    return ray
            except _StartTimeout:
                pass
            except Exception as exc:
                if not _ALARM["fired"]:  # else: the alarm, turned into another exception inside Ray
                    last = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                    if not local or "timed out" not in last.lower() and "timeout" not in last.lower():
                        timed_out = False
                        break
                    print(f"warning: Ray start attempt {attempt} failed ({last}); retrying", file=sys.stderr)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                if ours:
                    os.environ.pop(GCS_WAIT_ENV, None)
            if _ALARM["fired"]:  # out of time, however ray.init ended
                last = f"still starting after {timeout_s:g} s"
                break
            shutdown_ray(ray)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
    shutdown_ray(ray)
    what = "start a local Ray" if local else "connect to the Ray cluster"
    if not timed_out:
        raise RayStartError(f"could not {what}: {last}")
    raise RayStartError(f"could not {what} within --ray-timeout {timeout_s:g} s ({last}); the machine "
                        f"may be overloaded: run again, or give more time with --ray-timeout")


def _alarm(_signum, _frame) -> None:
    _ALARM["fired"] = True
    raise _StartTimeout()


def shutdown_ray(ray) -> None:
    try:
        ray.shutdown()
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# the command-line options every job takes
# ---------------------------------------------------------------------------------------------
def add_runner_options(parser, workers_help: str = "concurrent tasks (default: every CPU Ray offers)") -> None:
    """--workers, --address, --ray-timeout and --ray, as every job command spells them."""
    parser.add_argument("--workers", type=int, default=None, help=workers_help)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a "
                                                        "private local Ray)")
    parser.add_argument("--ray-timeout", type=float, default=DEFAULT_RAY_TIMEOUT_S, metavar="S",
                        help="seconds Ray may take to start (or to connect to --address); then exit 4")
    parser.add_argument("--verbose", action="store_true",
                        help=f"keep the native libraries' start-up messages (MediaPipe, TensorFlow Lite) "
                             f"in the job's and its workers' stderr (sets {VERBOSE_ENV}=1)")
    parser.add_argument("--ray", choices=MODES, default="auto", dest="ray_mode",
                        help="auto: a job of one task runs in a local worker process (no Ray start-up) "
                             "unless --address / RAY_ADDRESS; always: always on Ray; never: every "
                             "task in the local worker, one at a time")


def runner_from_args(args, after_start: Callable[[], None] | None = None, mode: str | None = None,
                     in_process: bool = False) -> Runner:
    """The Runner of parsed add_runner_options arguments (`mode` overrides --ray; ValueError on a
    bad value)."""
    if not args.ray_timeout > 0:
        raise ValueError(f"--ray-timeout must be positive, got {args.ray_timeout}")
    if getattr(args, "verbose", False):
        os.environ[VERBOSE_ENV] = "1"
    return Runner(args.address, args.workers, args.ray_timeout, mode or args.ray_mode, after_start, in_process)


def job_path(path: Path, flag: str = "--store") -> Path:
    """`path` made absolute, refusing a relative one under `ray job submit` (ValueError): there
    the driver runs in Ray's temporary copy of the working dir, so a relative store would land in
    that copy and vanish with it."""
    path = Path(path)
    if not path.is_absolute() and os.environ.get(JOB_SUBMISSION_ENV):
        raise ValueError(f"{flag} {path} is relative: under `ray job submit` the driver runs in Ray's "
                         f"temporary copy of the working dir ({Path.cwd()}), so it would land there; "
                         f"give an absolute path on storage every node shares")
    return path.resolve()
