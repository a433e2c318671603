"""Answer extraction and a bounded, safe equivalence check: the ground truth of the reward.

extract_answer() takes the last \\boxed{...} / \\fbox{...} / \\boxed x (with the boxes just before it
when only "," ";" lie between), else "#### N", else "the answer is ...", else (optionally) the last
number. is_equivalent(pred, gold) decides in stages, cheapest first: normalise both strings (\\dfrac,
\\left, \\text{}, units, degrees, \\%, thousands separators vs list commas, "and"/"or"/";" lists,
\\( \\) delimiters, $, spacing, "x = 5", "(p,q) ="; rules in _forms.py), exact match, multiple-choice
letter, word answers, plain numbers (exact, or within relative 1e-6 when either is written with
decimals; no percent rescaling, so 50 != 0.5), then the sympy stage: _latex.py parses safely,
_compare.py compares (sets, tuples, matrices, intervals, inequalities, equations, ≈).
The sympy stage runs in a persistent worker process, a fresh interpreter (like "spawn", so safe
next to torch/CUDA); a check that exceeds its time limit kills the worker, counts a timeout and
returns False. This works from any thread or process, unlike signal.alarm. verify_stats()
reports checks, timeouts and errors. The worker's start-up (~2 s, importing sympy) is not counted
in a check's limit; warm_up() starts it ahead of time.
"""

import importlib
import os
import re
import subprocess
import sys
import threading
import time
from fractions import Fraction
from multiprocessing.connection import Connection

from minipsn._forms import LIST_SEP, THOUSANDS, box_spans, decimal_comma, join_boxes, prepare

_MAX_CHARS = 2000  # longer answers are compared by exact match only
_MAX_DIGITS = 400  # number literals the fast path converts exactly
_RTOL = Fraction(1, 10**6)
_START_TIMEOUT = 120.0  # seconds for the worker to import sympy
_STATS = {"checks": 0, "timeouts": 0, "errors": 0, "worker_checks": 0, "worker_starts": 0,
          "last_error": ""}
_STATS_LOCK = threading.Lock()
_WORKER_LOCK = threading.Lock()  # one check at a time in the worker
_WORKER = None
_WORKER_FN = None  # None: _compare.symbolic_equal; tests inject a slow function

_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt", "°": "", "∪": "\\cup ", "\\langle": "(", "\\rangle": ")", "{,}": ","}
_LONG_UNITS = (  # stripped after an answer wherever they appear
    "units?|square units|sq units|meters?|metres?|inches|inch|feet|foot|yards?|miles?|mph|"
    "cents?|dollars?|hours?|minutes?|seconds?|days?|weeks?|months?|years?|degrees?|radians?|"
    "grams?|pounds?|ounces?|liters?|litres?|people|students|ways|points"
)
_SHORT_UNITS = "cm|mm|km|m|in|ft|yd|hrs?|mins?|secs?|s|deg|rad|kg|g|lbs?|oz|ml|mL|L"  # if in \text
_POWER = r"(?:\^\{?[23]\}?)?\s*$"
_TEXT_UNIT_RE = re.compile(
    rf"\\(?:text|mbox|mathrm|textnormal)\s*\{{\s*(?:square |cubic |sq )?(?:{_LONG_UNITS}|"
    rf"{_SHORT_UNITS})\s*\}}{_POWER}")
_TEXT_NOTE_RE = re.compile(r"(?<=[\w})])\s*\\(?:text|mbox|textnormal)\{ [^{}]*\}(?:\^\{?[23]\}?)?\s*$")
_UNIT_RE = re.compile(rf"(?<=\S)\s+(?:square |cubic |sq )?(?:{_LONG_UNITS}){_POWER}")
_WRAP_RE = re.compile(r"\\(?:text|textnormal|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|boxed|fbox)\s*\{")
_RELATIONS = [(re.compile(p), rel) for p, rel in (
    (r"<=|\\le(?:q|qslant)?(?![a-zA-Z])", "≤"), (r">=|\\ge(?:q|qslant)?(?![a-zA-Z])", "≥"),
    (r"\\lt(?![a-zA-Z])", "<"), (r"\\gt(?![a-zA-Z])", ">"), (r"!=|\\neq?(?![a-zA-Z])|≠", "≠"),
    (r"\\approx(?![a-zA-Z])", "≈"))]
_DECIMAL = re.compile(r"\d?\.\d|\d[eE]-?\d")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_SCI = re.compile(rf"({_NUMBER})(?:[eE](-?\d+)|(?:\\times|\\cdot|\*)10\^(?:\{{([+-]?\d+)\}}|(\d)))?")
_FRAC = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
_SLASH = re.compile(r"([+-]?\d+)/(\d+)")
_NAME = r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?"
_VAR_EQ = re.compile(rf"^(?:{_NAME}(?:\([a-z]\))?|\((?:{_NAME},)+{_NAME}\))=(?!.*=)")  # x=, f(x)=, (p,q)=
_CHOICE = re.compile(r"\(?([A-E])\)?")
_ANSWER_IS = re.compile(r"(?i)\banswer\s*(?:is|:)\s*:?")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_LAST_NUMBER = re.compile(r"(?<![\w)\]}])-?(?:\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|\.\d+)")


# ---------------------------------------------------------------- extraction


def boxed_contents(text: str) -> list[str | None]:
    """Content of every \\boxed/\\fbox in order; None for an unclosed or empty one."""
    return [content for _, _, content in box_spans(text)]


def extract_answer(text: str, last_number: bool = True, unboxed: bool = True) -> str | None:
    """Final answer in a completion: last \\boxed{} (or \\fbox{}, \\boxed x; boxes joined only by
    separators, "\\boxed{2}, \\boxed{3}", are one list), else (when unboxed) "#### N", else "the
    answer is ..." / "final answer: ...", else the last number when last_number; None when nothing
    fits. unboxed=False insists on a box: nothing else is an answer."""
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects str, got {type(text).__name__}")
    boxes = box_spans(text)
    if boxes:  # a completion that boxes is graded by its boxes only: \boxed{} answers nothing
        return join_boxes(text, boxes)
    if not unboxed:
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().split("\n")[0].strip().strip("$").rstrip(".")
        if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", tail):
            tail = tail.replace(",", "")  # GSM8K writes 1,000; its `final` field does not
        if tail:
            return tail
    said = list(_ANSWER_IS.finditer(text))
    if said:
        tail = text[said[-1].end():].split("\n")[0].strip().strip("*").strip()
        inline = re.match(r"\$+([^$]+)\$|\\[(\[](.+?)\\[)\]]", tail)  # "the answer is $5$ apples" -> 5
        number = re.match(r"-?[\d.,/]*\d(?=\s+[a-zA-Z])", tail)  # "is 5 because ..." -> 5
        tail = (inline[1] or inline[2]) if inline else number[0] if number else _SENTENCE_END.split(
            tail, maxsplit=1)[0]
        if tail.strip():
            return tail.strip()
    numbers = _LAST_NUMBER.findall(text) if last_number else []
    return numbers[-1].replace(",", "") if numbers else None


# ---------------------------------------------------------------- normalisation


def _unwrap(s: str) -> str:
    """\\text{abc} -> abc (also \\mbox, \\mathrm, \\boxed, ...), with nested braces."""
    for _ in range(100):
        m = _WRAP_RE.search(s)
        if not m:
            break
        depth, end = 1, m.end()
        while end < len(s) and depth:
            depth += (s[end] == "{") - (s[end] == "}")
            end += 1
        if depth:
            break  # unbalanced: leave it to fail later
        s = s[:m.start()] + s[m.end():end - 1] + s[end:]
    return s


def normalise(s: str) -> str:
    """Canonical spelling of an answer; equal outputs mean equal answers."""
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\.?", "", s)
    s = prepare(_unwrap(_TEXT_NOTE_RE.sub("", _TEXT_UNIT_RE.sub("", s))))  # before spacing goes
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    for pattern, rel in _RELATIONS:
        s = pattern.sub(rel, s)
    s = re.sub(r"(\\\\)|\\(?:[!,;: ]|(?:quad|qquad|displaystyle)(?![a-zA-Z]))|~",
               lambda m: m.group(1) or " ", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree", "", s)
    s = _UNIT_RE.sub("", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?<![A-Za-z]) | (?![A-Za-z])", "", s)  # keep only spaces between letters
    s = re.sub(r"^[a-zA-Z]\\in(?![a-zA-Z])", "", s).rstrip(".,;:" + LIST_SEP)
    if THOUSANDS.fullmatch(s):  # 32,349 (32, 349 is a list: see _forms.py)
        s = s.replace(",", "")
    s = re.sub(r"\{(-?\d{1,3}(?:,\d{3})+)\}", lambda m: "{" + m[1].replace(",", "") + "}", s)
    s = re.sub(r"^(-?\d+)_\{?\d+\}?$", r"\1", s)  # 52_8: the base is implied by the question
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{?(\d+)\}?\{?(\d+)\}?", s)
    if mixed and int(mixed[3]) < int(mixed[4]):  # 1\frac{4}{5} is the mixed number 9/5
        sign, whole, num, den = mixed[1], int(mixed[2]), int(mixed[3]), int(mixed[4])
        s = f"{sign}\\frac{{{whole * den + num}}}{{{den}}}"
    return s.replace(LIST_SEP, ",")


def _as_fraction(s: str) -> Fraction | None:
    """Exact value of a plain number (5, -0.25, 8.7e8, 3\\times10^{5}, \\frac{1}{2}, 1/2)."""
    if len(s) > _MAX_DIGITS:
        return None
    if m := _SCI.fullmatch(s):
        exp = m[2] or m[3] or m[4] or "0"
        return Fraction(m[1]) * Fraction(10) ** int(exp) if abs(int(exp)) <= _MAX_DIGITS else None
    if m := _FRAC.fullmatch(s):
        num, den = int(m[2] or m[3]), int(m[4] or m[5])
        return Fraction(-num if m[1] == "-" else num, den) if den else None
    if m := _SLASH.fullmatch(s):
        return Fraction(int(m[1]), int(m[2])) if int(m[2]) else None
    return None


def _close(a: Fraction, b: Fraction) -> bool:
    return abs(a - b) <= _RTOL * max(abs(a), abs(b))


def _is_words(s: str) -> bool:
    """Text answers (Evelyn, even, east) are compared as words, not as products of symbols."""
    return bool(re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)*", s)) and len(s) > 1 and s != "pi"


def _cheap_verdict(pred: str, gold: str) -> tuple[bool | None, str, str]:
    """(verdict or None when undecided, normalised pred, normalised gold), without sympy."""
    if pred == gold:
        return True, pred, gold
    if len(pred) > _MAX_CHARS or len(gold) > _MAX_CHARS:
        return False, pred, gold
    p, g = normalise(pred), normalise(gold)
    p = decimal_comma(p, g)  # a prediction's 1000,99 may be 1000.99; a gold's comma never is
    if ("=" in p) != ("=" in g):  # "x = 5" answers "5"
        p, g = _VAR_EQ.sub("", p, count=1), _VAR_EQ.sub("", g, count=1)
    if not p or not g:
        return False, p, g
    if p == g:
        return True, p, g
    if letter := _CHOICE.fullmatch(g):  # multiple choice: (C), C, \text{(C)}, "(C) 12"
        got = _CHOICE.fullmatch(p) or re.match(r"\(([A-E])\)", p)
        return bool(got) and got[1] == letter[1], p, g
    if _is_words(p) or _is_words(g):
        same = p.replace(" ", "").lower() == g.replace(" ", "").lower()
        return _is_words(p) and _is_words(g) and same, p, g
    a, b = _as_fraction(p), _as_fraction(g)
    if a is not None and b is not None:  # exact unless one is written with decimals
        decimal = _DECIMAL.search(p) or _DECIMAL.search(g)
        return (_close(a, b) if decimal else a == b), p, g
    return None, p, g


# ---------------------------------------------------------------- worker process


def _serve(requests, replies, fn) -> None:
    """Worker loop: answer (pred, gold) requests with ("ok", bool) or ("error", message)."""
    from minipsn import _compare, _latex

    fn = fn or _compare.symbolic_equal
    replies.send(("ready", ""))
    while True:
        try:
            pred, gold = requests.recv()
        except EOFError:  # the parent closed the pipe or exited
            return
        try:
            reply = ("ok", bool(fn(pred, gold)))
        except (_latex.LatexError, _latex.TooLarge, RecursionError):
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
        argv = [sys.executable, "-c", "from minipsn.verify import _worker_main; _worker_main()"]
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


# ---------------------------------------------------------------- public API


def warm_up() -> None:
    """Start the sympy worker now (it otherwise starts on the first check that needs it)."""
    with _WORKER_LOCK:
        _get_worker()


def is_equivalent(pred: str, gold: str, timeout: float = 3.0) -> bool:
    """True when answer pred means the same as gold. Never raises on str input: unreadable
    answers are False; past `timeout` seconds the check is False and counted in verify_stats()."""
    for name, value in (("pred", pred), ("gold", gold)):
        if not isinstance(value, str):
            raise TypeError(f"is_equivalent expects str, got {type(value).__name__} for {name}")
    if not timeout > 0:
        raise ValueError(f"is_equivalent timeout must be > 0 seconds, got {timeout}")
    start = time.monotonic()
    _count("checks")
    try:
        verdict, p, g = _cheap_verdict(pred, gold)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        _count("errors", f"fast path: {type(exc).__name__}: {exc}")
        return False
    if verdict is not None:
        return verdict
    return _ask_worker(p, g, max(timeout - (time.monotonic() - start), 0.01))


def verify_stats() -> dict:
    """Counters since import: checks, timeouts, errors (plus worker_checks, worker_starts and
    last_error). A growing timeouts or errors count means rewards are being lost."""
    with _STATS_LOCK:
        return dict(_STATS)


def bench_verifier(pairs: list[tuple[str, str]], timeout: float = 3.0) -> dict:
    """Throughput of is_equivalent on (pred, gold) pairs, after warming up the worker."""
    warm_up()
    before = verify_stats()
    start = time.perf_counter()
    equal = sum(is_equivalent(p, g, timeout) for p, g in pairs)
    seconds = time.perf_counter() - start
    after = verify_stats()
    return {"checks": len(pairs), "equivalent": equal, "seconds": seconds,
            "checks_per_s": len(pairs) / seconds if seconds > 0 else float("inf"),
            "worker_checks": after["worker_checks"] - before["worker_checks"],
            "timeouts": after["timeouts"] - before["timeouts"],
            "errors": after["errors"] - before["errors"]}
