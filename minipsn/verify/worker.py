"""The verifier's worker process: the sympy stage (parse.py, symbolic.py) runs here, never in the caller.

The worker is a fresh Python process (subprocess + exec, like multiprocessing's "spawn": nothing of
torch/CUDA is inherited) that answers (pred, gold) requests over a pipe. A check that exceeds its
time limit kills the worker, counts a timeout and returns False; a new worker starts importing
sympy at once. This works from any thread or process, unlike signal.alarm. The worker's start-up
(~2 s, importing sympy) is outside every check's limit; warm_up() starts it ahead of time.
One check runs at a time (one worker); verify_stats() counts checks, timeouts and errors.
"""

import importlib
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

_START_TIMEOUT = 120.0  # seconds for the worker to import sympy
_STATS = {"checks": 0, "timeouts": 0, "errors": 0, "worker_checks": 0, "worker_starts": 0,
          "last_error": ""}
_STATS_LOCK = threading.Lock()
_WORKER_LOCK = threading.Lock()  # one check at a time in the worker
_WORKER = None
_WORKER_FN = None  # None: symbolic.symbolic_equal; tests inject a slow function



def _serve(requests, replies, fn) -> None:
    """Worker loop: answer (pred, gold) requests with ("ok", bool) or ("error", message)."""
    from minipsn.verify import parse, symbolic

    fn = fn or symbolic.symbolic_equal
    replies.send(("ready", ""))
    while True:
        try:
            pred, gold = requests.recv()
        except EOFError:  # the parent closed the pipe or exited
            return
        try:
            reply = ("ok", bool(fn(pred, gold)))
        except (parse.LatexError, parse.TooLarge, RecursionError):
            reply = ("ok", False)  # unreadable, absurdly nested or astronomically large
        except Exception as exc:  # any sympy failure must not kill the worker: count it instead
            reply = ("error", f"{type(exc).__name__}: {str(exc)[:200]}")
        replies.send(reply)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:  # a hung check must not outlive a killed trainer
        time.sleep(1.0)
    os._exit(0)


def _worker_main() -> None:
    """Entry point of the worker process: requests on stdin, replies on stdout."""
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # stray prints must not corrupt the reply channel
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    fn = None
    if len(sys.argv) > 1:  # "module:function" injected by _restart_worker (tests)
        module, name = sys.argv[1].split(":")
        fn = getattr(importlib.import_module(module), name)
    _serve(requests, replies, fn)


class _Worker:
    """A fresh Python process that runs the sympy stage; killed when a check runs too long.

    Started with subprocess (exec, like multiprocessing's "spawn": nothing of torch/CUDA is
    inherited) rather than multiprocessing.Process, which would re-run the caller's __main__
    script in the child and cannot start from a daemonic multiprocessing.Pool worker.
    """

    def __init__(self, fn):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   CUDA_VISIBLE_DEVICES="")
        argv = [sys.executable, "-c", "from minipsn.verify.worker import _worker_main; _worker_main()"]
        if fn is not None:
            argv.append(f"{fn.__module__}:{fn.__qualname__}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.requests = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self.replies = Connection(os.dup(self.proc.stdout.fileno()), writable=False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.pid, self.ready = os.getpid(), False
        _count("worker_starts")

    def wait_ready(self) -> None:
        """Block until the worker has imported sympy (start-up is outside every check's limit)."""
        if self.ready:
            return
        try:
            self.ready = self.replies.poll(_START_TIMEOUT) and self.replies.recv()[0] == "ready"
        except (EOFError, OSError):  # the child died while importing
            self.ready = False
        if not self.ready:
            self.kill()
            raise RuntimeError("minipsn.verify worker did not start (see its traceback above) "
                               f"within {_START_TIMEOUT:.0f} s")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.requests.close()
        self.replies.close()


def _count(key: str, message: str = "") -> None:
    with _STATS_LOCK:
        _STATS[key] += 1
        if message:
            _STATS["last_error"] = message


def _get_worker() -> _Worker:
    global _WORKER
    if _WORKER is not None and (_WORKER.pid != os.getpid() or _WORKER.proc.poll() is not None):
        _WORKER = None  # inherited through fork, or dead: the pipe is not ours to use
    if _WORKER is None:
        _WORKER = _Worker(_WORKER_FN)
    _WORKER.wait_ready()
    return _WORKER


def _replace_worker(worker: _Worker) -> None:
    global _WORKER
    worker.kill()
    _WORKER = _Worker(_WORKER_FN)  # starts importing now, ready by the next hard check


def _ask_worker(pred: str, gold: str, timeout: float) -> bool:
    with _WORKER_LOCK:
        worker = _get_worker()
        _count("worker_checks")
        try:
            worker.requests.send((pred, gold))
            if not worker.replies.poll(timeout):
                _replace_worker(worker)
                _count("timeouts")
                return False
            status, value = worker.replies.recv()
        except (EOFError, OSError) as exc:  # the worker died (e.g. out of memory)
            _replace_worker(worker)
            _count("errors", f"worker died: {type(exc).__name__}: {exc}")
            return False
    if status == "error":
        _count("errors", value)
        return False
    return value


def _restart_worker(fn=None) -> None:
    """Replace the worker; it runs module-level fn(pred, gold) instead of the sympy stage
    (a test hook: a function that sleeps forces a timeout). fn=None restores the default."""
    global _WORKER, _WORKER_FN
    with _WORKER_LOCK:
        if _WORKER is not None and _WORKER.pid == os.getpid():
            _WORKER.kill()
        _WORKER, _WORKER_FN = None, fn
        _get_worker()


def _after_fork() -> None:
    global _WORKER_LOCK, _STATS_LOCK, _WORKER
    _WORKER_LOCK, _STATS_LOCK, _WORKER = threading.Lock(), threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork)


def warm_up() -> None:
    """Start the sympy worker now (it otherwise starts on the first check that needs it)."""
    with _WORKER_LOCK:
        _get_worker()


def verify_stats() -> dict:
    """Counters since import: checks, timeouts, errors (plus worker_checks, worker_starts and
    last_error). A growing timeouts or errors count means rewards are being lost."""
    with _STATS_LOCK:
        return dict(_STATS)
