"""Answer extraction and a bounded, safe equivalence check: the ground truth of the reward.

Public API: extract_answers(texts, extract) (the answer of each completion: boxes by the kit's box reader,
an unboxed completion by Math-Verify in the worker or, reward.extract=kit, by extract_answer in extract.py),
is_equivalent(pred, gold), is_equivalent_many (a batch: the pairs that reach sympy run on a small pool of
workers at once), normalise(), verify_stats(), warm_up(), boxed_contents() and bench_verifier().
is_equivalent decides in stages, cheapest first: normalise both strings (normalise.py), exact match,
multiple-choice letter, word answers, clock times and ratios, plain numbers (exact, or within relative 1e-6
when either is written with decimals; 50 != 0.5), then the sympy stage in the worker (worker.py): parse.py
reads LaTeX safely (model text never reaches eval/exec/sympify), symbolic.py compares. A check past its time
limit kills the worker and is False; verify_stats() counts it. `verifier` picks the worker's judge (judge.py):
"math-verify" (default: Math-Verify behind guards from the strict checks), "strict" or "both". No hedge pays:
an answer that states several values (boxes offered together, a chain whose sides differ, a disjunction) is
right only for a gold of those values (docs/verifier.md).
"""

import re
import time
from fractions import Fraction

from minipsn.verify.extract import box_spans, boxed_contents, extract_answer, join_boxes, offered_values, stated_answer
from minipsn.verify.normalise import clock, decimal_comma, normalise, ratio
from minipsn.verify.worker import _ask_worker, _count, _extract, ask_many, verify_stats, warm_up
from minipsn.verify.worker import _restart_worker as _restart_worker  # a test hook (a slow worker)

# _ask_worker, _count, _restart_worker: test hooks
__all__ = ["extract_answer", "extract_answers", "is_equivalent", "is_equivalent_many", "normalise", "boxed_contents",
           "verify_stats", "warm_up", "bench_verifier", "VERIFIERS", "EXTRACTS"]

VERIFIERS = ("math-verify", "strict", "both")  # reward.verifier; the first is the default
EXTRACTS = ("math-verify", "kit")  # reward.extract; the first is the default

_MAX_CHARS = 2000  # longer answers are compared by exact match only
_MAX_DIGITS = 400  # number literals the fast path converts exactly
_RTOL = Fraction(1, 10**6)
_DECIMAL = re.compile(r"\d?\.\d|\d[eE]-?\d")
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_SCI = re.compile(rf"({_NUMBER})(?:[eE](-?\d+)|(?:\\times|\\cdot|\*)10\^(?:\{{([+-]?\d+)\}}|(\d)))?")
_FRAC = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
_SLASH = re.compile(r"([+-]?\d+)/(\d+)")
_NAME = r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?"
_VAR_EQ = re.compile(rf"^(?:{_NAME}(?:\([a-z]\))?|\((?:{_NAME},)+{_NAME}\)|{_NAME}(?::{_NAME})+)=(?!.*=)")  # x=, f(x)=,
# (p,q)=, V_1:V_2= (a ratio's label: "V_{1}:V_{2}=11:21" answers 11:21)
_CHOICE = re.compile(r"\(?([A-E])\)?")


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
    cp, cg = clock(p, pred), clock(g, gold)
    if cp or cg:  # 8:34 p.m. is a time: its parts must match, not its value as a ratio
        return bool(cp and cg) and cp[0] == cg[0] and (cp[1] == cg[1] or "" in (cp[1], cg[1])), p, g
    p, g = ratio(p), ratio(g)  # 3:5 is 3/5
    a, b = _as_fraction(p), _as_fraction(g)
    if a is not None and b is not None:  # exact unless one is written with decimals
        decimal = _DECIMAL.search(p) or _DECIMAL.search(g)
        return (_close(a, b) if decimal else a == b), p, g
    return _number_tuples(p, g, a, b), p, g


def _number_tuples(p: str, g: str, a: Fraction | None, b: Fraction | None) -> bool | None:
    """Tuples of plain numbers, "(12,9,13)": equal element by element (exact unless written with decimals); a plain
    number is never a tuple of two or more. Anything else (intervals, lists without parentheses, expressions) is left
    to the judge. This keeps the synthetic tasks' tuple answers off the worker: most checks of an evaluation."""
    def parts(s: str) -> list[Fraction] | None:
        if not (s.startswith("(") and s.endswith(")")) or s.count("(") != 1:
            return None
        values = [_as_fraction(x) for x in s[1:-1].split(",")]
        return values if len(values) >= 2 and None not in values else None

    tp, tg = parts(p), parts(g)
    if tp is not None and tg is not None:
        decimal = _DECIMAL.search(p) or _DECIMAL.search(g)
        return len(tp) == len(tg) and all(_close(x, y) if decimal else x == y for x, y in zip(tp, tg))
    if (tp is not None and b is not None) or (tg is not None and a is not None):
        return False
    return None


def _cheap_stage(pred: str, gold: str, timeout: float, verifier: str) -> tuple[bool | None, str, str, float]:
    """(verdict or None, normalised pred, gold, seconds left for sympy) of one counted check."""
    for name, value in (("pred", pred), ("gold", gold)):
        if not isinstance(value, str):
            raise TypeError(f"is_equivalent expects str, got {type(value).__name__} for {name}")
    if verifier not in VERIFIERS:
        raise ValueError(f"unknown verifier {verifier!r}; use {', '.join(VERIFIERS)}")
    if not timeout > 0:
        raise ValueError(f"is_equivalent timeout must be > 0 seconds, got {timeout}")
    start = time.monotonic()
    _count("checks")
    try:
        verdict, p, g = _cheap_verdict(pred, gold)
    except (ValueError, OverflowError, ZeroDivisionError) as exc:
        _count("errors", f"fast path: {type(exc).__name__}: {exc}")
        return False, pred, gold, 0.0
    return verdict, p, g, max(timeout - (time.monotonic() - start), 0.01)


def is_equivalent(pred: str, gold: str, timeout: float = 3.0, verifier: str = VERIFIERS[0]) -> bool:
    """True when answer pred means the same as gold to `verifier` (VERIFIERS). Never raises on str
    input: unreadable answers are False; past `timeout` seconds the check is False and counted in
    verify_stats()."""
    verdict, p, g, left = _cheap_stage(pred, gold, timeout, verifier)
    return _ask_worker(p, g, left, verifier, pred, gold) if verdict is None else verdict


def is_equivalent_many(pairs: list[tuple[str, str]], timeout: float = 3.0, workers: int = 1,
                       verifier: str = VERIFIERS[0]) -> list[bool]:
    """is_equivalent of each (pred, gold) pair, in order. The cheap stages run here first; the pairs
    they leave undecided go to up to `workers` sympy workers at once, each check under its own
    `timeout`. workers=1 checks them one by one in the one worker, exactly as is_equivalent does."""
    if workers < 1:
        raise ValueError(f"is_equivalent_many needs workers >= 1, got {workers}")
    staged = [_cheap_stage(p, g, timeout, verifier) for p, g in pairs]
    hard = [i for i, s in enumerate(staged) if s[0] is None]
    verdicts = [s[0] for s in staged]
    for i, v in zip(hard, ask_many([(*staged[i][1:], verifier, *pairs[i]) for i in hard], workers)):
        verdicts[i] = v
    return verdicts


def extract_answers(texts: list[str], extract: str = EXTRACTS[0], last_number: bool = True, unboxed: bool = True,
                    timeout: float = 3.0, workers: int = 1) -> list[str | None]:
    """The final answer of each completion (None: no answer). Boxes first, read in-process by the kit's box
    reader (extract.py: the last run of boxes). A completion without a box has no answer when unboxed=False;
    else `extract` reads it: "kit" with extract_answer; "math-verify" with Math-Verify's parse in the worker
    (judge.extract, each under `timeout`, up to `workers` at once), behind two rules of the kit: where it
    finds nothing, the kit's reading stands in (verify_stats()["extract_fallbacks"]); where the completion
    says "the answer is X" and Math-Verify reads a value not equal to X ("The answer is 6 because 2 + 3 = 5"
    reads 5), it states two values and has no answer (verify_stats()["extract_conflicts"]). With either, an
    unboxed pick among values its last sentence offers ("This is 5 or 6.") is all of them."""
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"extract_answers expects str completions, got {type(text).__name__}")
    if extract not in EXTRACTS:
        raise ValueError(f"unknown extract {extract!r}; use {', '.join(EXTRACTS)}")
    spans = [box_spans(t) for t in texts]
    if extract == "kit":
        answers = [join_boxes(t, s) if s else extract_answer(t, last_number, unboxed) for t, s in zip(texts, spans)]
        return [a if s else _alternatives(t, a) for t, s, a in zip(texts, spans, answers)]
    answers = [join_boxes(t, s) if s else None for t, s in zip(texts, spans)]
    todo = [i for i, (t, s) in enumerate(zip(texts, spans)) if unboxed and not s and t.strip()]
    for i, found in zip(todo, ask_many([(texts[i], timeout, last_number) for i in todo], workers, _extract)):
        stated = stated_answer(texts[i], last_number, clear=True)
        if found is None and (found := extract_answer(texts[i], last_number=last_number)) is not None:
            _count("extract_fallbacks")
        elif found is not None and stated is not None and not is_equivalent(found, stated, timeout):
            found = None
            _count("extract_conflicts")
        answers[i] = _alternatives(texts[i], found)
    return answers


def _alternatives(text: str, answer: str | None) -> str | None:
    """An unboxed answer that is one of the values its last sentence offers ("This is 5 or 6.") is all of them."""
    values = offered_values(text) if answer is not None else []
    return ", ".join(values) if normalise(answer or "") in map(normalise, values) else answer


def bench_verifier(pairs: list[tuple[str, str]], timeout: float = 3.0, verifier: str = VERIFIERS[0]) -> dict:
    """Throughput of is_equivalent on (pred, gold) pairs, after warming up the worker."""
    warm_up()
    before = verify_stats()
    start = time.perf_counter()
    equal = sum(is_equivalent(p, g, timeout, verifier) for p, g in pairs)
    seconds = time.perf_counter() - start
    after = verify_stats()
    return {"checks": len(pairs), "equivalent": equal, "seconds": seconds,
            "checks_per_s": len(pairs) / seconds if seconds > 0 else float("inf"),
            "worker_checks": after["worker_checks"] - before["worker_checks"],
            "timeouts": after["timeouts"] - before["timeouts"],
            "errors": after["errors"] - before["errors"]}
