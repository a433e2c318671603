"""The worker's Math-Verify: its extraction of unboxed answers, and the verdicts of strict and Math-Verify.

extract(text) is Math-Verify's pick of a completion's answer (TRL's settings). judge(verifier, pred, gold,
raw_pred, raw_gold) answers a check the cheap stages left open, in the worker process only. `strict`
compares the normalised answers with symbolic.py. `math-verify` reads the raw answers with Math-Verify
(math_verify.parse, then math_verify.verify: what TRL and open-r1 reward with), its own signal-based
timeouts off (they work only in a main thread; the worker's hard limit, reward.timeout, bounds every
check instead), behind guards from the strict checks, each
against a false positive of Math-Verify 0.9.0 (tests/test_verify_mathverify.py):
- braces: an answer with unbalanced { } is refused (Math-Verify reads 1}}}}} as 1);
- size: an answer the strict reader refuses as too large (towers, huge factorials) is refused before
  sympy; answers over MV_CHARS characters are left to strict (Math-Verify's time grows fast with length);
- numbers: when the strict reader reads both answers without a free symbol (numbers, or tuples, sets,
  intervals, equations of numbers), its exact comparison decides. Math-Verify rounds to 6 places and
  compares at 15 digits (1/2004! = 1/2006!, 10^{-20} = 2·10^{-20}), reads 1.5e3 as 1.5·e·3, takes
  the last side of a false 5+5=11, and matches the set {1,2} with the pair (1,2);
- several values: when either answer is a chain (x = 14 = 13), one is a list and the other is not, or a
  list is made by "or", \\lor, \\mid or spacing (x = 12 \\quad x = 13), strict decides: Math-Verify grades a
  chain by its last side and reads the last of two statements, so a hedge would pay;
- percent: an answer with % is compared as strict does (the sign dropped, never rescaled: 50 is not
  0.5), where Math-Verify reads 50\\%x as 0.5x;
- misreadings: strict decides when Math-Verify's reading drops a letter, changes the number of
  symbols or their case (its unit stripping reads \\sin 2t as \\sin 2: t is a tonne; R is r to it;
  without a strict reading, an answer that names a variable must keep one: x ≡ 1 (mod 3) is not 3),
  when it would have to solve an inequality that is not linear (x^2 < 3 for (-√3, √3): an unsolved
  answer is no answer), when both answers are inequalities (it compares them as written: 2x+1 > 5 is
  not x > 2 to it; x < 0 or x = 1 is a set of two relations, not a union), and when a set meets a
  tuple or an interval (it takes x=3, y=2 for (2, 3)).
`both` returns both verdicts; the caller accepts only when both accept and counts disagreements.
"""

import logging
import re
import warnings

import math_verify
import math_verify.parser as mv_parser
import sympy
from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig
from sympy.core.function import AppliedUndef
from sympy.core.relational import Relational
from sympy.utilities.exceptions import SymPyDeprecationWarning

from minipsn.verify import parse, symbolic
from minipsn.verify.normalise import LIST_SEP, pick_approx, prepare, unwrap

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns once that its timeouts are off: ours is on
# its readings of a percent multiply sympy sets (deprecated in sympy): noise on the worker's stderr, no verdict
warnings.filterwarnings("ignore", category=SymPyDeprecationWarning)

MV_CHARS = 300  # longer answers go to strict (the longest MATH-500, OlympiadBench, Minerva gold: 210)
STAGES = {}  # stage name -> replacement function; tests inject a slow one (worker._restart_worker)
# read once when the worker starts (outside every check's limit): the LaTeX parser (antlr) builds its
# decision tables lazily, so the first answers of each shape would take a few times longer
WARM_UP = ("\\frac{3\\sqrt{2}}{4}x^{2}-\\pi", "\\{1, -2\\}, (3, \\infty)", "x \\le 5", "\\dfrac{a+b}{c_1} = 2",
           "\\begin{pmatrix} 1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\sin(2t) + \\log_2 8 + |x| + 10\\%")


# TRL's accuracy_reward reads a completion this way (LaTeX, boxed first, Math-Verify's LaTeX clean-up); its
# unit stripping is off here, as it drops letters (\\sin 2t reads \\sin 2): the judge strips units itself,
# behind the guard that catches a dropped letter
_LATEX = LatexExtractionConfig(boxed_match_priority=0, normalization_config=NormalizationConfig(units=False))
_EXPR = {True: ExprExtractionConfig(), False: ExprExtractionConfig(try_extract_without_anchor=False)}


def extract(text: str, last_number: bool = True) -> str | None:
    """Math-Verify's answer in a completion: its parse with LaTeX and expression extraction, boxed first,
    the first match only (as TRL's accuracy_reward), returned as the text it matched (its LaTeX cleaned
    up) for the kit's checks; None when nothing matches. last_number=False reads no expression or number
    that no "answer" word anchors."""
    answer = _pick(text, last_number, parser=False)
    if answer is not None and " and " in answer:  # math joined by and/or: joined only when each part parses
        answer = _pick(text, last_number, parser=True)
    return answer


def _pick(text: str, last_number: bool, parser: bool) -> str | None:
    """parse()'s pick. In first_match mode the text of one match does not depend on whether Math-Verify's
    LaTeX parser reads it (only matches joined by and/or do), and only the text is kept here, so without
    `parser` that parser (antlr: 12 of the 12.3 ms a MATH-500 solution takes) stands aside during the call."""
    real = mv_parser.parse_latex_cached
    mv_parser.parse_latex_cached = real if parser else lambda latex: sympy.Integer(0)  # a placeholder reading
    try:
        found = math_verify.parse(text, [_LATEX, _EXPR[last_number]], extraction_mode="first_match",
                                  fallback_mode="first_match", parsing_timeout=None)
    finally:
        mv_parser.parse_latex_cached = real
    answer = found[-1] if found and isinstance(found[-1], str) else ""
    return answer.strip() or None


def warm_up() -> None:
    """Read WARM_UP with Math-Verify (the worker calls it before it says it is ready)."""
    for answer in WARM_UP:
        math_verify.parse(_as_math(answer), parsing_timeout=None)


def judge(verifier: str, pred: str, gold: str, raw_pred: str, raw_gold: str) -> dict[str, bool]:
    """{verifier name: verdict} of the normalised (pred, gold) and the raw answers they came from."""
    if verifier == "strict":
        return {"strict": strict_equal(pred, gold)}
    elif verifier == "math-verify":
        return {"math-verify": guarded_equal(pred, gold, raw_pred, raw_gold)}
    elif verifier == "both":
        return {"strict": strict_equal(pred, gold), "math-verify": guarded_equal(pred, gold, raw_pred, raw_gold)}
    else:
        raise ValueError(f"unknown verifier {verifier!r}; use math-verify, strict or both")


def strict_equal(pred: str, gold: str) -> bool:
    """symbolic.symbolic_equal; unreadable, absurdly nested or astronomically large answers are False."""
    try:
        return bool(STAGES.get("strict", symbolic.symbolic_equal)(pred, gold))
    except (parse.LatexError, parse.TooLarge, RecursionError):
        return False


def guarded_equal(pred: str, gold: str, raw_pred: str, raw_gold: str) -> bool:
    """Math-Verify's verdict on the raw answers, behind the guards of the module docstring."""
    if not (balanced(raw_pred) and balanced(raw_gold)):
        return False
    try:
        readings = [parse.parse_answer(pick_approx(a, bool(parse._DECIMAL.search(b)))) for a, b in ((pred, gold), (gold, pred))]
    except parse.TooLarge:
        return False
    except (parse.LatexError, RecursionError):  # the strict reader cannot read it: Math-Verify alone decides
        readings = None
    numbers = readings is not None and not any(map(_symbols, readings))
    long = max(len(raw_pred), len(raw_gold)) > MV_CHARS
    if numbers or long or "%" in raw_pred + raw_gold or _several(raw_pred, raw_gold):
        return strict_equal(pred, gold)
    verdict = STAGES.get("math-verify", math_verify_equal)(raw_pred, raw_gold, readings)
    return strict_equal(pred, gold) if verdict is None else bool(verdict)


def math_verify_equal(raw_pred: str, raw_gold: str, readings: list | None = None) -> bool | None:
    """Math-Verify's verdict: parse both answers (as inline math unless they hold some), then compare;
    a relation answers an interval either way round (0 < x < 1 is (0, 1)), as with strict. None (strict
    decides) where it would misread, given the strict `readings` of (pred, gold) (module docstring)."""
    gold = math_verify.parse(_as_math(raw_gold), parsing_timeout=None)
    pred = math_verify.parse(_as_math(raw_pred), parsing_timeout=None)
    if not (gold and pred):
        return False
    if _misread(pred, gold, readings, (raw_pred, raw_gold)):
        return None
    return math_verify.verify(gold, pred, timeout_seconds=None, allow_set_relation_comp=True)


def _misread(pred: list, gold: list, readings: list | None, raws: tuple[str, str]) -> bool:
    """Whether Math-Verify's readings [sympy, its text] of (pred, gold) would misjudge the pair, given the
    strict readings (None: the strict reader cannot read them)."""
    p, g = pred[0], gold[0]
    if readings is None:  # it reads x \equiv 1 \pmod 3 as 3: a named answer must keep a symbol
        return any(_letters(raw) and not _mv_symbols(m[0]) for m, raw in zip((pred, gold), raws))
    if [len(_symbols(r)) for r in readings] != [len(_mv_symbols(x)) for x in (p, g)]:
        return True
    if any(_letters(m[-1]) < _letters(raw) for m, raw in zip((pred, gold), raws)):
        return True
    names = [{str(x) for x in _symbols(r)} for r in readings]  # it lowercases names: R is r to it
    if names[0] != names[1] and {n.lower() for n in names[0]} == {n.lower() for n in names[1]}:
        return True
    if _unsolved(p) or _unsolved(g) or (_inequality(p) and _inequality(g)):
        return True
    if any(isinstance(x, sympy.FiniteSet) and any(map(_inequality, x.args))
           and all(isinstance(a, (Relational, sympy.And, sympy.Or)) for a in x.args) for x in (p, g)):
        return True  # "x < 0 or x = 1" is a set of two relations to it, a union to strict
    kinds = {"ordered" if isinstance(x, (sympy.Tuple, sympy.Interval)) else "set" if isinstance(x, sympy.FiniteSet)
             else None for x in (p, g)}  # (2, 3) may read as an open interval
    return kinds == {"ordered", "set"}


def _several(raw_pred: str, raw_gold: str) -> bool:
    """Whether either answer is a chain (a = b = c), one is a list and the other is not, or a list is made by a
    separator other than a comma (or, \\lor, \\mid, x = 12 \\quad x = 13: normalise.prepare): Math-Verify reads
    x = 14 = 13 and x = 12 \\mid x = 13 as 13, the strict reader keeps every value."""
    items = [parse._split_top(prepare(unwrap(x)), (LIST_SEP, ",")) for x in (raw_pred, raw_gold)]
    chain = any(len(parse._split_top(item, ("=",))) > 2 for answer in items for item in answer)
    commas = [parse._split_top(unwrap(x), (",",)) for x in (raw_pred, raw_gold)]
    joined = any(len(answer) > len(plain) for answer, plain in zip(items, commas))
    return chain or joined or (len(items[0]) > 1) != (len(items[1]) > 1)


def balanced(text: str) -> bool:
    """Every { closes, in order (\\{ and \\} are set braces and count too: they come in pairs)."""
    depth = 0
    for c in text:
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
    return depth == 0


def _as_math(answer: str) -> str:
    """An extracted answer as Math-Verify reads it: wrapped in $…$ unless it carries its own inline math
    (\\$ is a currency sign, dropped: it reads nothing in \\$36)."""
    answer = answer.replace("\\$", "").strip()
    return answer if "$" in answer or "\\(" in answer or "\\[" in answer else f"${answer}$"


def _letters(latex: str) -> int:
    """Letters outside LaTeX commands and \\text{}: what names variables (and units)."""
    return sum(c.isalpha() for c in re.sub(r"\\[a-zA-Z]+", "", re.sub(r"\\text\s*\{[^{}]*\}", "", latex)))


def _symbols(reading) -> set:
    """The free symbols of a strict reading (an expression, a matrix, or a tuple of parts)."""
    if isinstance(reading, (tuple, list)):
        return set().union(*map(_symbols, reading))
    return set(getattr(reading, "free_symbols", ()))


def _mv_symbols(reading) -> set:
    """The free symbols and undefined functions (f in f(x)) of a Math-Verify reading; a string has none."""
    if not isinstance(reading, (sympy.Basic, sympy.MatrixBase)):
        return set()
    return set(reading.free_symbols) | {f.func for f in reading.atoms(AppliedUndef)}


def _inequality(reading) -> bool:
    """<, ≤, >, ≥, ≠, or a chain of them (And, Or)."""
    if isinstance(reading, (sympy.And, sympy.Or)):
        return all(map(_inequality, reading.args))
    return isinstance(reading, Relational) and not isinstance(reading, sympy.Eq)


def _unsolved(reading) -> bool:
    """An inequality that is not linear in each of its symbols: x^2 < 3, |x| < 3, 1/x > 2."""
    if isinstance(reading, (sympy.And, sympy.Or)):
        return any(map(_unsolved, reading.args))
    if not _inequality(reading):
        return False
    poly = (reading.lhs - reading.rhs).as_poly()
    return poly is None or any(not isinstance(g, (sympy.Symbol, AppliedUndef)) or poly.degree(g) > 1 for g in poly.gens)
