"""The verifier's symbolic comparison (sympy stage): decides whether two answers mean the same.

Numbers compare exactly unless either answer is written with decimals (then within RTOL);
expressions with free symbols by evaluating both at seeded random rational points; equations up to
a constant factor; sets (repeats ignored) and bare lists (repeats kept) without order, tuples,
matrices (a row vector is a column vector) and intervals with it; (a, b) is a point or an open
interval. A relation in one symbol with a numeric slope bounded by numbers is read as an interval
(-x > -1 is (-oo, 1); -793 < a < 10 is (-793, 10); its variable's name is not compared), other
relations structurally or up to a positive factor (2x+2y > 2 is x+y > 1). For "A ≈ B" see normalise.py.
Several values never pay: a chain x = 5+5+1 = 11 is its last side only when every side but a first one
that names the answer equals it (x = 14 = 13 equals nothing), and a list answers a single value only when
all its items are that value (two spellings of it), else only a list or set of the same values.
Imported only inside the verifier's worker process (worker.py).
"""

import random

import sympy
from sympy import Rational, Symbol, nan, oo, zoo
from sympy.core.evalf import PrecisionExhausted
from sympy.matrices import MatrixBase

from minipsn.verify.normalise import pick_approx
from minipsn.verify.parse import _DECIMAL, _FLIP, LatexError, parse_answer

RTOL = Rational(1, 10**6)  # relative tolerance when either answer is written with decimals
EVALF_RTOL = 1e-20  # otherwise: only the rounding of evalf at DPS digits is forgiven
SAMPLE_ATOL = 1e-20  # absolute floor when comparing values at sampled points
DPS = 30  # digits for evalf


def _kind(a) -> str:
    return a[0] if isinstance(a, tuple) else "matrix" if isinstance(a, MatrixBase) else "expr"


def symbolic_equal(pred: str, gold: str) -> bool:
    """True when two normalised answers mean the same; raises LatexError/TooLarge on bad input.
    Numbers compare exactly unless either answer is written with decimals (0.5, 8.7e8):
    3986729 != 3986730 and 1/2004! != 1/2006!, but 0.866025 == \\sqrt3/2 within RTOL."""
    # A ≈ B: B against a decimal answer, else A (normalise.py)
    pred, gold = pick_approx(pred, bool(_DECIMAL.search(gold))), pick_approx(gold, bool(_DECIMAL.search(pred)))
    decimal = _DECIMAL.search(pred) or _DECIMAL.search(gold)
    a, b = (_rel_as_interval(x) for x in (parse_answer(pred), parse_answer(gold)))
    return _Compare(RTOL if decimal else 0).same(a, b)


class _Compare:
    """Structural comparison of parse_answer() results with one numeric tolerance."""

    def __init__(self, rtol):
        self.rtol = rtol

    def same(self, a, b) -> bool:
        if "chain" in (_kind(a), _kind(b)):  # a chain is its last side, when its sides agree
            a, b = (self.unchain(x) if _kind(x) == "chain" else x for x in (a, b))
            return a is not None and b is not None and self.same(a, b)
        ka, kb, same = _kind(a), _kind(b), self.same
        if ka == "list" and kb in ("expr", "eq", "rel") and all(same(a[1][0], x) for x in a[1][1:]):
            return same(a[1][0], b)  # two spellings of one value (\boxed{28} or \boxed{28_9}) are that value
        if kb == "list" and ka in ("expr", "eq", "rel") and all(same(b[1][0], x) for x in b[1][1:]):
            return same(a, b[1][0])
        a, b = (("set", self.distinct(x[1])) if k == "set" else x for x, k in ((a, ka), (b, kb)))
        if ka in ("set", "list") and len(a[1]) == 1:
            return same(a[1][0], b)
        if kb in ("set", "list") and len(b[1]) == 1:
            return same(a, b[1][0])
        if (ka == "eq") != (kb == "eq"):  # y = 2x+1 answers 2x+1; a true 5+6 = 11 answers 11
            eq, other = (a, b) if ka == "eq" else (b, a)
            if all(getattr(side, "is_number", False) for side in eq[1:]):
                return same(eq[1], eq[2]) and same(eq[2], other)
            return any(_name(side) and same(rest, other) for side, rest in ((eq[1], eq[2]), (eq[2], eq[1])))
        if ka == kb == "eq":
            return (same(a[1], b[1]) and same(a[2], b[2])) or self.proportional(
                a[1] - a[2], b[1] - b[2])
        if {ka, kb} <= {"set", "list"} and "set" in (ka, kb):  # {1,2} answers 1,1,2 too
            xs, ys = (list(self.distinct(x[1]) if k == "list" else x[1]) for x, k in ((a, ka), (b, kb)))
            return self.unordered(xs, ys)
        if {ka, kb} <= {"set", "list"} or {ka, kb} <= {"union", "list"}:  # x<1 or x>3 is a union
            return self.unordered(list(a[1]), list(b[1]))
        if {ka, kb} == {"interval", "tuple"}:  # (a, b) is also the open interval a < x < b
            iv, tup = (a, b) if ka == "interval" else (b, a)
            return len(tup[1]) == 2 and not (iv[1] or iv[4]) and same(iv[2], tup[1][0]) and same(
                iv[3], tup[1][1])
        if {ka, kb} <= {"tuple", "list", "matrix"}:
            if ka == kb == "matrix" and a.shape != b.shape and not (1 in a.shape and 1 in b.shape):
                return False  # a row vector answers a column vector, a 2x3 matrix is no 3x2 one
            xs, ys = (list(x[1]) if isinstance(x, tuple) else list(x) for x in (a, b))
            return len(xs) == len(ys) and all(same(x, y) for x, y in zip(xs, ys))
        if ka == kb == "rel":  # x > 2 is 2 < x
            flipped = (tuple(_FLIP[o] for o in reversed(b[1])), b[2][::-1])
            return any(a[1] == ops and all(same(x, y) for x, y in zip(a[2], sides))
                       for ops, sides in ((b[1], b[2]), flipped)) or self.scaled_rel(a, b)
        if ka == kb == "interval":
            return a[1] == b[1] and a[4] == b[4] and same(a[2], b[2]) and same(a[3], b[3])
        return ka == kb == "expr" and self.expr(a, b)

    def unchain(self, chain):
        """The last side of a chain a = b = ... = z when every side equals it (x = 5+5+1 = 11), the first one
        only when it holds no symbol (it may name the answer); None when two differ (x = 14 = 13, x = 5+5 = 13,
        x = p - q = 7: several values, a hedge)."""
        first, *middle, last = chain[1]
        return last if all(self.same(s, last) for s in middle) and (_free(first) or self.same(first, last)) else None

    def distinct(self, xs) -> tuple:
        out = []
        for x in xs:
            if not any(self.same(x, y) for y in out):
                out.append(x)
        return tuple(out)

    def unordered(self, xs: list, ys: list) -> bool:
        if len(xs) != len(ys):
            return False
        for x in xs:
            match = next((j for j, y in enumerate(ys) if self.same(x, y)), None)
            if match is None:
                return False
            ys.pop(match)
        return True

    def expr(self, a, b) -> bool:
        if any(x.has(zoo, nan) for x in (a, b)):
            return False  # undefined (1/0, 0/0) equals nothing, not even itself
        if a == b:
            return True
        if any(x.has(oo, -oo) for x in (a, b)):
            return False  # infinities compare only structurally
        if symbols := sorted(a.free_symbols | b.free_symbols, key=str):
            return self.at_points(a, b, symbols)
        if a.is_Rational and b.is_Rational:  # exact arithmetic: tiny values stay apart
            return bool(abs(a - b) <= self.rtol * max(abs(a), abs(b)))
        va, vb = _value(a), _value(b)
        return va is not None and vb is not None and self.close(va, vb)

    def close(self, va, vb, atol: float = 0.0) -> bool:
        diff, sa, sb = (abs(x).evalf(DPS) for x in (va - vb, va, vb))
        if not all(x.is_Number for x in (diff, sa, sb)):
            raise LatexError("values did not evaluate to numbers")
        return bool(diff <= max(self.rtol, EVALF_RTOL) * max(sa, sb) + atol)

    def at_points(self, a, b, symbols: list) -> bool:
        agreed = 0
        for point in _points(symbols):
            va, vb = _value(a, point), _value(b, point)
            if va is not None and vb is not None:
                if not self.close(va, vb, SAMPLE_ATOL):
                    return False
                agreed += 1
        return agreed >= 2 or sympy.simplify(a - b) == 0

    def proportional(self, d1, d2) -> bool:
        """Equations d1 = 0 and d2 = 0 are the same when d1/d2 is a nonzero constant."""
        ratio = self.ratio(d1, d2)
        return ratio is not None and ratio != 0

    def scaled_rel(self, a, b) -> bool:
        """2x + 2y > 2 is x + y > 1: one relation each, d = big side - small side, d1/d2 > 0."""
        if len(a[1]) != 1 or len(b[1]) != 1 or "≠" in a[1] + b[1] or (a[1][0] in "≤≥") != (b[1][0] in "≤≥"):
            return False
        d1, d2 = ((r[2][0] - r[2][1]) * (1 if r[1][0] in ">≥" else -1) for r in (a, b))
        if not (d1.free_symbols and d2.free_symbols):  # 2 > 1 and 3 > 1 are no answers
            return False
        ratio = self.ratio(d1, d2)
        return ratio is not None and bool(ratio.is_positive)

    def ratio(self, d1, d2):
        """The constant d1/d2 at the sampled points, or None when it is not constant."""
        if isinstance(d1, MatrixBase) or isinstance(d2, MatrixBase):
            return None
        points = _points(sorted(d1.free_symbols | d2.free_symbols, key=str))
        ratios = [(v1 / v2).evalf(DPS) for v1, v2 in ((_value(d1, p), _value(d2, p)) for p in points)
                  if v1 is not None and v2 is not None and v2 != 0]
        same = len(ratios) >= 2 and all(self.close(r, ratios[0], SAMPLE_ATOL) for r in ratios)
        return ratios[0] if same else None


def _name(x) -> bool:
    """Whether one side of an equation names the answer: a symbol, or a product or quotient of symbols
    (AB = 4, \\frac{NO}{BO} = \\frac{1}{\\sqrt6}), as Math-Verify reads a label."""
    if isinstance(x, Symbol):
        return True
    factors = sympy.Mul.make_args(x) if isinstance(x, sympy.Basic) and not isinstance(x, MatrixBase) else ()
    return bool(factors) and all(isinstance(f, Symbol) or (isinstance(f, sympy.Pow) and isinstance(f.base, Symbol)
                                                          and f.exp.is_Integer) for f in factors)


def _free(a) -> bool:
    """Whether a parsed answer (an expression, a matrix or a tagged tuple of them) holds a free symbol."""
    if isinstance(a, tuple):
        return any(_free(x) for x in a if not isinstance(x, (str, bool)))
    return bool(getattr(a, "free_symbols", ()))


def _value(x, point: dict | None = None):
    """x (at point) to DPS digits; None when not finite or sympy cannot tell (floor of an integer)."""
    try:
        v = x.evalf(DPS, subs=point)
    except (PrecisionExhausted, ValueError, ZeroDivisionError):  # e.g. a pole of gamma
        return None
    return v if v.is_finite else None


def _points(symbols: list, n: int = 4) -> list[dict]:
    # seeded so a verdict is reproducible; rationals in [0.3, 3.2] avoid 0, 1 and branch cuts
    rng = random.Random(0)
    return [{s: Rational(rng.randint(30, 310), 97) for s in symbols} for _ in range(n)]


def _rel_as_interval(a):
    """x > 2 -> (2, oo); -x ≥ -1 -> (-oo, 1]; -793 < a < 10 -> (-793, 10): a relation in one
    symbol, linear with a numeric slope, bounding it by numbers. Anything else is left as it is."""
    if _kind(a) in ("set", "list", "tuple", "union"):
        return (a[0], tuple(_rel_as_interval(x) for x in a[1]))
    if _kind(a) != "rel" or "≠" in a[1] or not 2 <= len(a[2]) <= 3:
        return a
    sides = [s for s in a[2] if not isinstance(s, MatrixBase)]
    symbols = set().union(*(s.free_symbols for s in sides)) if len(sides) == len(a[2]) else set()
    if len(symbols) != 1:
        return a
    x, = symbols
    if len(a[2]) == 3:  # lo < x < hi, both relations pointing the same way
        lo, mid, hi = a[2]
        if mid != x or lo.free_symbols or hi.free_symbols or (a[1][0] in "<≤") != (a[1][1] in "<≤"):
            return a
        lo_op, hi_op = a[1] if a[1][0] in "<≤" else a[1][::-1]
        if a[1][0] in ">≥":  # 10 ≥ a > -793
            lo, hi = hi, lo
        return ("interval", lo_op in "≤≥", lo, hi, hi_op in "≤≥")
    d = a[2][0] - a[2][1]  # d op 0
    slope = sympy.diff(d, x)
    if slope.free_symbols or not slope.is_number or not slope.is_real or slope == 0 or slope.is_negative is None:
        return a
    bound, op = -(d - slope * x) / slope, a[1][0]
    if (d - slope * x).free_symbols:
        return a
    if slope.is_negative:
        op = _FLIP[op]
    closed = op in "≤≥"
    return ("interval", closed, bound, oo, False) if op in ">≥" else ("interval", False, -oo, bound, closed)
