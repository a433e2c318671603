"""The verifier's worker process: Math-Verify's extraction and the sympy stage (judge.py) run here, not in the caller.

The worker is a fresh Python process (subprocess + exec, like multiprocessing's "spawn": nothing of
torch/CUDA is inherited) that answers requests over a pipe: (pred, gold) checks, and completions whose
answer Math-Verify reads (extraction runs regexes over model text: it gets the same hard limit). A
request that exceeds its time limit kills the worker, counts a timeout and returns False (no answer);
a new worker starts importing sympy and Math-Verify at once. This works from any thread or process,
unlike signal.alarm. The worker's start-up (~3 s, importing sympy and Math-Verify) is outside every
check's limit; warm_up() starts it ahead of time. One request runs at a time in each worker; ask_many()
spreads a batch over a small pool of them (one thread per worker). verify_stats() counts checks, timeouts,
errors and, with the verifier `both`, the checks where strict and Math-Verify disagree, over all workers.
"""

import importlib
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

_START_TIMEOUT = 120.0  # seconds for the worker to import sympy
_STATS = {"checks": 0, "timeouts": 0, "errors": 0, "disagree": 0, "worker_checks": 0, "worker_starts": 0,
          "extracts": 0, "extract_fallbacks": 0, "extract_conflicts": 0, "last_error": ""}
_STATS_LOCK = threading.Lock()
_WORKER_FN = None  # None, or (stage, fn): tests make a judge.py stage slow (_restart_worker)


def _serve(requests, replies, stage: str, fn) -> None:
    """Worker loop: answer ("extract", text, last_number) with ("ok", answer or None) and (verifier, pred,
    gold, raw_pred, raw_gold) with ("ok", {verifier: bool}); ("error", message) when either raises."""
    from minipsn.verify import judge

    if fn is not None:
        judge.STAGES[stage] = fn
    judge.warm_up()
    replies.send(("ready", ""))
    while True:
        try:
            request = requests.recv()
        except EOFError:  # the parent closed the pipe or exited
            return
        try:
            extract = judge.STAGES.get("extract", judge.extract)
            reply = ("ok", extract(*request[1:]) if request[0] == "extract" else judge.judge(*request))
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
    stage, fn = "", None
    if len(sys.argv) > 1:  # "stage=module:function" injected by _restart_worker (tests)
        stage, target = sys.argv[1].split("=")
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
    _serve(requests, replies, stage, fn)


class _Worker:
    """A fresh Python process that runs the sympy stage; killed when a check runs too long.

    Started with subprocess (exec, like multiprocessing's "spawn": nothing of torch/CUDA is
    inherited) rather than multiprocessing.Process, which would re-run the caller's __main__
    script in the child and cannot start from a daemonic multiprocessing.Pool worker.
    """

    def __init__(self, injected):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   CUDA_VISIBLE_DEVICES="")
        argv = [sys.executable, "-c", "from minipsn.verify.worker import _worker_main; _worker_main()"]
        if injected is not None:
            stage, fn = injected
            argv.append(f"{stage}={fn.__module__}:{fn.__qualname__}")
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


class _Slot:
    """One place in the pool: a worker process and the lock that lets one check at a time use it."""

    def __init__(self):
        self.lock, self.worker = threading.Lock(), None

    def get(self) -> _Worker:
        w = self.worker
        if w is not None and (w.pid != os.getpid() or w.proc.poll() is not None):
            w = None  # inherited through fork, or dead: the pipe is not ours to use
        if w is None:
            w = self.worker = _Worker(_WORKER_FN)
        w.wait_ready()
        return w

    def replace(self) -> None:
        self.worker.kill()
        self.worker = _Worker(_WORKER_FN)  # starts importing now, ready by the next hard check


_SLOTS = [_Slot()]  # slot 0 serves is_equivalent; ask_many adds more on demand
_SLOTS_LOCK = threading.Lock()


def _slots(n: int) -> list[_Slot]:
    with _SLOTS_LOCK:
        _SLOTS.extend(_Slot() for _ in range(n - len(_SLOTS)))
        return _SLOTS[:n]


def _call(slot: _Slot, request: tuple, timeout: float, counter: str) -> tuple[str, object, bool]:
    """(status "ok" / "error" / "timeout" / "died", value, whether the worker was replaced) of one request
    to slot's worker under `timeout` seconds, counted under `counter`; a timeout or a death is counted here."""
    with slot.lock:
        worker = slot.get()
        _count(counter)
        try:
            worker.requests.send(request)
            if not worker.replies.poll(timeout):
                slot.replace()
                _count("timeouts")
                return "timeout", None, True
            status, value = worker.replies.recv()
        except (EOFError, OSError) as exc:  # the worker died (e.g. out of memory)
            slot.replace()
            _count("errors", f"worker died: {type(exc).__name__}: {exc}")
            return "died", None, True
    if status == "error":
        _count("errors", value)
    return status, value, False


def _check(slot: _Slot, pred: str, gold: str, timeout: float, verifier: str = "strict", raw_pred: str | None = None,
           raw_gold: str | None = None) -> tuple[bool, bool]:
    """(verdict, whether the worker was replaced) of one check in slot's worker: True when every verdict
    the verifier asks for (both: strict and Math-Verify) is True. raw_*: the answers before normalising."""
    request = (verifier, pred, gold, pred if raw_pred is None else raw_pred, gold if raw_gold is None else raw_gold)
    status, value, replaced = _call(slot, request, timeout, "worker_checks")
    if status != "ok":
        return False, replaced
    if len(set(value.values())) > 1:
        _count("disagree")
    return bool(value) and all(value.values()), replaced


def _extract(slot: _Slot, text: str, timeout: float, last_number: bool = True) -> tuple[str | None, bool]:
    """(Math-Verify's answer in a completion or None, whether the worker was replaced): judge.extract in
    slot's worker; past `timeout` (a completion that sends its regexes astray) there is no answer."""
    status, value, replaced = _call(slot, ("extract", text, last_number), timeout, "extracts")
    return (value if status == "ok" else None), replaced


def _ask_worker(pred: str, gold: str, timeout: float, verifier: str = "strict", raw_pred: str | None = None,
                raw_gold: str | None = None) -> bool:
    return _check(_SLOTS[0], pred, gold, timeout, verifier, raw_pred, raw_gold)[0]


def ask_many(requests: list[tuple], workers: int = 1, task=_check) -> list:
    """task(slot, *request) of each request, in order: (pred, gold, timeout[, verifier, raw_pred, raw_gold])
    with _check (verdicts), (text, timeout, last_number) with _extract (answers); on up to `workers` worker
    processes at once: one thread per worker takes the next request. A thread whose worker timed out stops
    (its replacement is importing) unless it is the last, so a hung request holds up only itself."""
    if workers <= 1 or len(requests) <= 1:
        return [task(_SLOTS[0], *r)[0] for r in requests]
    results, todo, lock = [None] * len(requests), iter(enumerate(requests)), threading.Lock()
    slots = _slots(min(workers, len(requests)))
    active = [len(slots)]

    def serve(slot: _Slot) -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            results[item[0]], replaced = task(slot, *item[1])
            with lock:
                if replaced and active[0] > 1:
                    active[0] -= 1
                    return

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _restart_worker(fn=None, stage: str = "strict") -> None:
    """Replace every worker; they run module-level fn instead of judge.py's `stage`: fn(pred, gold) for
    strict, fn(raw_pred, raw_gold) for math-verify, fn(text, last_number) for extract (a test hook: a
    function that sleeps forces a timeout). fn=None restores the default."""
    global _WORKER_FN
    with _SLOTS_LOCK:
        slots = list(_SLOTS)
    for slot in slots:
        with slot.lock:
            if slot.worker is not None and slot.worker.pid == os.getpid():
                slot.worker.kill()
            slot.worker = None
    _WORKER_FN = None if fn is None else (stage, fn)
    warm_up(len(slots))


def _after_fork() -> None:
    global _SLOTS_LOCK, _STATS_LOCK, _SLOTS
    _SLOTS_LOCK, _STATS_LOCK, _SLOTS = threading.Lock(), threading.Lock(), [_Slot()]


os.register_at_fork(after_in_child=_after_fork)


def warm_up(workers: int = 1) -> None:
    """Start `workers` sympy workers now, importing at once (else each starts on its first check)."""
    slots = _slots(workers)
    for slot in slots:
        with slot.lock:
            if slot.worker is None or slot.worker.proc.poll() is not None or slot.worker.pid != os.getpid():
                slot.worker = _Worker(_WORKER_FN)
    for slot in slots:
        with slot.lock:
            slot.get()


def verify_stats() -> dict:
    """Counters since import: checks, timeouts, errors, disagree (verifier `both`: strict and Math-Verify
    differ), plus worker_checks, worker_starts, extracts (completions Math-Verify read in the worker),
    extract_fallbacks (of them, those read by the kit's extraction instead), extract_conflicts (those whose
    reading contradicts their "the answer is" statement: no answer) and last_error. A growing
    timeouts or errors count means rewards are being lost."""
    with _STATS_LOCK:
        return dict(_STATS)
