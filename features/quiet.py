"""Native-library noise off by default: MediaPipe / TFLite / absl print start-up warnings on stderr.

Each MediaPipe graph prints "Created TensorFlow Lite XNNPACK delegate", absl's "All log messages
before absl::InitializeLog()" and a "Feedback manager requires a model with a single signature"
line per model when it starts, i.e. per utterance: about half of an extraction's stderr, saying
nothing a user can act on. The environment variables that used to silence them (GLOG_minloglevel,
TF_CPP_MIN_LOG_LEVEL) are set by default but no longer reach MediaPipe 0.10's absl logging, so a
graph's start and first frame run with file descriptor 2 pointed at /dev/null (`QuietStart`);
everything after that, and everything Python raises, is untouched.

UNISYNC_VERBOSE=1 keeps all of it (`pipelines/extract.py --verbose` sets it; Ray workers started by
the driver inherit the driver's environment, and features.face reads it in the worker).
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

VERBOSE_ENV = "UNISYNC_VERBOSE"
# Read by glog / TensorFlow builds of the native libraries (older MediaPipe, TF); harmless otherwise.
NATIVE_LOG_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}

_lock = threading.Lock()
_depth = 0  # threads inside `native_stderr_off`: the first redirects fd 2, the last restores it
_saved_fd: int | None = None


def verbose() -> bool:
    """Whether the user asked for the native libraries' messages (UNISYNC_VERBOSE set, not 0)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_native_logs() -> None:
    """Default the native log levels to warnings-off unless verbose; a value the user set wins."""
    if verbose():
        return
    for name, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(name, value)


@contextmanager
def native_stderr_off() -> Iterator[None]:
    """File descriptor 2 -> /dev/null for the block (nothing when verbose); thread-safe, nestable."""
    global _depth, _saved_fd
    if verbose():
        yield
        return
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            _saved_fd = os.dup(2)
            os.dup2(devnull, 2)
            os.close(devnull)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved_fd is not None:
                sys.stderr.flush()
                os.dup2(_saved_fd, 2)
                os.close(_saved_fd)
                _saved_fd = None


class QuietStart:
    """A MediaPipe solution whose construction and first `process` (when every calculator has
    opened and its models have loaded: where the warnings come from) run with stderr off."""

    def __init__(self, make: Callable[[], Any]):
        with native_stderr_off():
            self.graph = make()
            _wait_until_started(self.graph)
        self._started = False

    def process(self, image: Any) -> Any:
        if self._started:
            return self.graph.process(image)
        with native_stderr_off():
            result = self.graph.process(image)
        self._started = True
        return result

    def close(self) -> None:
        self.graph.close()

    def __enter__(self) -> "QuietStart":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_until_started(solution: Any) -> None:
    """A solution's graph opens its calculators (and loads its models) on its own threads after
    the constructor returns: wait for that, so the warnings fall inside the quiet window."""
    graph = getattr(solution, "_graph", None)
    if graph is not None and hasattr(graph, "wait_until_idle"):
        graph.wait_until_idle()
