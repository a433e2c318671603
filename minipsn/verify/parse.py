"""Safe LaTeX -> sympy conversion and comparison of final answers (the verifier's sympy stage).

A tokenizer and recursive-descent parser build sympy objects directly: model text never reaches
eval/exec or sympify, and every name becomes a plain Symbol. Decimals become exact Rationals.
Before sympy evaluates a power, factorial or binomial, a size guard raises TooLarge when the
result would exceed ~MAX_BITS bits (10^{10^{10}}, 1000000!), so such answers are "not equivalent"
at once instead of hanging the worker. parse_answer() also reads the structure around expressions:
sets \\{a,b\\} and bare lists a,b (unordered), tuples (a,b) (ordered), intervals [a,b), unions,
equations (a labelled (p,q) = (3,2) stands for its last side; a chain x = 5+6 = 11 keeps its sides),
inequalities, matrices (pmatrix, bmatrix, array, ...), and ± (two answers). symbolic_equal()
compares two structures: numbers exactly (relative RTOL when either side is written with decimals: 0.5, 8.7e8),
expressions by evaluating both at seeded random points, equations up to a constant factor
(symbolic_equal lives in symbolic.py). Imported only inside the verifier's worker process.
"""

import math
import re

import sympy
from sympy import Abs, E, I, Pow, Rational, Symbol, ceiling, floor, log, oo, pi
from sympy.matrices import MatrixBase

MAX_BITS = 100_000  # ~30k digits: far above any contest answer, still instant for sympy
MAX_SYMBOLIC_EXP = 10_000  # x^{10^4} is fine; x^{10^10} is refused
MAX_FACTORIAL = 5_000  # also bounds binomials (4x)
MAX_DIGITS = 400  # longest number literal and largest decimal exponent (8.7e400)
MAX_ITEMS = 64  # elements of a set, tuple, list or matrix
MAX_DEPTH = 100  # nesting of groups; deeper input is garbage, refused before RecursionError

_FUNCS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
          "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
          "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "ln": log, "log": log,
          "exp": sympy.exp}
_SYMBOLS = set(  # commands read as plain symbols
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho "
    "sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega hbar "
    "ell".split())
_VALUES = {"pi": pi, "infty": oo, "infinity": oo}
_WRAPS = {"text", "textnormal", "mathrm", "mathbf", "textbf", "mathit", "mbox", "textrm", "operatorname"}
_STARTERS = _SYMBOLS | set(_VALUES) | _WRAPS | {
    "frac", "dfrac", "tfrac", "cfrac", "sqrt", "binom", "dbinom", "tbinom", "lfloor", "lceil", "begin"}
_FLIP = {"<": ">", ">": "<", "≤": "≥", "≥": "≤", "≠": "≠"}
_MULT = {"*", "\\cdot", "\\times", "\\ast"}
_SKIP = {"\\left", "\\right", "\\big", "\\Big", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr",
         "\\displaystyle", "\\,", "\\!", "\\;", "\\:", "\\ ", "\\quad", "\\qquad"}
_MATRICES = {"pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix", "vmatrix", "array"}
_DECIMAL = re.compile(r"\d?\.\d|\d[eE]-?\d")
_LABELS = re.compile(r"\((?:[a-zA-Z](?:_\{?\w+\}?)?,)+[a-zA-Z](?:_\{?\w+\}?)?\)")  # (p,q) in (p,q)=
_PM = re.compile(r"\\(?:pm|mp)(?![a-zA-Z])")
# e-notation takes no "+": 2e+1 is 2e + 1, while 8.7e8 and 1e-5 are numbers
_TOKEN = re.compile(r"(\d+(?:\.\d*)?(?:[eE]-?\d+)?|\.\d+(?:[eE]-?\d+)?)|(\\(?:[a-zA-Z]+|.))"
                    r"|([a-zA-Z]+)|(\s+)|(.)", re.S)


class LatexError(ValueError):
    """The text is not an answer this converter can read."""


class TooLarge(ValueError):
    """Evaluating the text would build an astronomically large number."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    toks = []
    for m in _TOKEN.finditer(text):
        num, cmd, word, space, _ = m.groups()
        if not space and m.group() not in _SKIP:
            toks.append(("num" if num else "cmd" if cmd else "word" if word else "op", m.group()))
    return toks


def _number(text: str) -> sympy.Expr:
    mant, _, exp = text.lower().partition("e")
    whole, _, frac = mant.partition(".")
    if len(whole) + len(frac) > MAX_DIGITS or len(exp) > 5 or abs(int(exp or 0)) > MAX_DIGITS:
        raise TooLarge(f"number literal too large: {text[:20]}")
    value = Rational(int(whole or "0") * 10 ** len(frac) + int(frac or "0"), 10 ** len(frac))
    return value * Rational(10) ** int(exp or 0)


def _magnitude(x: sympy.Expr) -> float:
    """|x| as a float (inf when huge or not evaluable)."""
    try:
        return float(abs(x.evalf(15)))
    except (TypeError, ValueError, OverflowError):
        return float("inf")


def _bits(x: sympy.Expr) -> float:
    """About how many bits an exact power of x needs per unit of exponent (at least 1)."""
    if x.is_Rational:
        return max(math.log2(abs(int(x.p)) or 1), math.log2(int(x.q)), 1.0)
    v = abs(x.evalf(15))
    return max(1.0, abs(float(sympy.log(v, 2).evalf(15)))) if v.is_Number and v != 0 else 1.0


def _pow(base, exp):
    if isinstance(base, MatrixBase) or isinstance(exp, MatrixBase):
        raise LatexError("powers of matrices are not supported")
    # a symbolic exponent is sized at 3 for every symbol: 590331^{345226+y} is refused, 2^n is not
    size = _magnitude(exp.subs({s: 3 for s in exp.free_symbols}))
    if base.is_number and base not in (0, 1, -1) and size * _bits(base) > MAX_BITS:
        raise TooLarge("power too large")
    if not base.is_number and exp.is_number and size > MAX_SYMBOLIC_EXP:
        raise TooLarge("symbolic power too large")
    return Pow(base, exp)


def _bounded(fn, limit: int, *args):
    """fn(*args) (factorial, binomial) unless a numeric argument exceeds limit. Only integer
    arguments are evaluated: sympy can spin for minutes on binomial(7, binomial(sin(i), pi))."""
    if any(x.is_number and _magnitude(x) > limit for x in args):
        raise TooLarge(f"{fn.__name__} too large")
    return fn(*args, evaluate=all(x.is_Integer for x in args))


def _letter(c: str) -> sympy.Expr:
    # e and i are Euler's number and the imaginary unit, as in contest answers (1-1/e, 6-5i)
    return E if c == "e" else I if c == "i" else Symbol(c)


class _Parser:
    """Recursive descent over tokens: expr > term (explicit/implicit product) > unary > postfix."""

    def __init__(self, text: str):
        self.toks, self.i, self.abs_depth, self.depth = _tokenize(text), 0, 0, 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "")

    def take(self) -> tuple[str, str]:
        self.i += 1
        return self.toks[self.i - 1] if self.i <= len(self.toks) else ("end", "")

    def expect(self, text: str) -> None:
        if (got := self.take()[1]) != text:
            raise LatexError(f"expected {text!r}, got {got!r}")

    def parse(self):
        value = self.expr()
        if self.peek()[0] != "end":
            raise LatexError(f"unexpected {self.peek()[1]!r}")
        return value

    def expr(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise LatexError("nested too deeply")
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            value = value + (self.term() if self.take()[1] == "+" else -self.term())
        self.depth -= 1
        return value

    def term(self):
        value = self.unary()
        while True:
            text = self.peek()[1]
            if text in _MULT or text in ("/", "\\div"):
                self.take()
                value = value * self.unary() if text in _MULT else value / self.unary()
            elif self.starts_primary():
                value = value * self.postfix()  # implicit product: 2x, 3\sqrt2, (a+1)(b+2)
            else:
                return value

    def unary(self):
        text = self.peek()[1]
        if text in ("-", "+"):
            self.take()
            return -self.unary() if text == "-" else self.unary()
        return self.postfix()

    def starts_primary(self, functions: bool = True) -> bool:
        kind, text = self.peek()
        if kind == "num" or (kind == "word" and (functions or text not in _FUNCS)):
            return True
        if kind == "op":
            return text in "([{" or (text == "|" and self.abs_depth == 0)
        return kind == "cmd" and (text[1:] in _STARTERS or (functions and text[1:] in _FUNCS))

    def postfix(self):
        value = self.primary()
        while True:
            text = self.peek()[1]
            if text == "^":
                self.take()
                value = _pow(value, self.unary() if self.peek()[1] in ("+", "-") else self.arg())
            elif text == "!":
                self.take()
                value = _bounded(sympy.factorial, MAX_FACTORIAL, value)
            elif text == "_" and isinstance(value, Symbol):
                self.take()
                value = Symbol(f"{value.name}_{self.raw_arg()}")
            else:
                return value

    def arg(self):
        """A macro argument: {group} or one character (x^23 is x^2*3, \\frac12 is 1/2)."""
        kind, text = self.peek()
        if kind in ("num", "word") and len(text) > 1:
            self.toks[self.i:self.i + 1] = _tokenize(text[0]) + _tokenize(text[1:])
        return self.primary()

    def raw_arg(self) -> str:
        """A subscript or environment name as text: {a1} -> "a1", 1 -> "1"."""
        if self.peek()[1] != "{":
            return self.take()[1][:1]
        self.take()
        parts = []
        while self.peek()[1] != "}":
            if self.peek()[0] == "end":
                raise LatexError("unclosed brace")
            parts.append(self.take()[1])
        self.take()
        return "".join(parts)

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return _number(text)
        if kind == "word":
            return self.word(text)
        if kind == "cmd":
            return self.command(text[1:])
        if text in ("(", "[", "{"):
            value = self.expr()
            self.expect({"(": ")", "[": "]", "{": "}"}[text])
            return value
        if text == "|" and self.abs_depth == 0:
            self.abs_depth += 1
            value = self.expr()
            self.expect("|")
            self.abs_depth -= 1
            return Abs(value, evaluate=False)  # evaluating can spin: |\sqrt{\sqrt{i}-27}|
        raise LatexError(f"unexpected {text or 'end of input'!r}")

    def word(self, text: str):
        if text in _FUNCS:
            return self.function(text)
        if text in _VALUES:
            return _VALUES[text]
        if len(text) > 1:  # "xy" is x*y; putting the rest back makes ab^2 = a*b^2
            self.toks.insert(self.i, ("word", text[1:]))
        return _letter(text[0])

    def command(self, name: str):
        if name in ("frac", "dfrac", "tfrac", "cfrac"):
            num = self.arg()
            return num / self.arg()
        if name == "sqrt":
            if self.peek()[1] != "[":
                return _pow(self.arg(), Rational(1, 2))
            self.take()
            n = self.expr()
            self.expect("]")
            return _pow(self.arg(), 1 / n)
        if name in ("binom", "dbinom", "tbinom"):
            return _bounded(sympy.binomial, 4 * MAX_FACTORIAL, self.arg(), self.arg())
        if name in _FUNCS:
            return self.function(name)
        if name in _VALUES:
            return _VALUES[name]
        if name in _SYMBOLS:
            return Symbol(name)
        if name in _WRAPS:
            return self.arg()
        if name in ("lfloor", "lceil"):
            value = self.expr()
            self.expect("\\rfloor" if name == "lfloor" else "\\rceil")
            return floor(value) if name == "lfloor" else ceiling(value)
        if name == "begin":
            return self.matrix()
        raise LatexError(f"unsupported command \\{name}")

    def function(self, name: str):
        base = power = None
        if name == "log" and self.peek()[1] == "_":  # \log_2 8
            self.take()
            base = self.arg()
        if self.peek()[1] == "^":  # \sin^2 x
            self.take()
            power = self.arg()
        if self.peek()[1] in ("(", "{", "["):
            arg = self.primary()
        else:  # \sin 2x is sin(2x), but \sin x \cos x is sin(x)*cos(x)
            arg = self.unary()
            while self.starts_primary(functions=False):
                arg = arg * self.postfix()
        value = _FUNCS[name](arg) if base is None else log(arg, base)
        return value if power is None else _pow(value, power)

    def matrix(self):
        if (env := self.raw_arg()) not in _MATRICES:
            raise LatexError(f"unsupported environment {env}")
        if env == "array":
            self.raw_arg()  # the column spec {cc}
        rows, row = [], []
        while True:
            row.append(self.expr())
            sep = self.take()[1]
            if sep == "\\\\" and self.peek()[1] == "\\end":
                sep = self.take()[1]
            if sep == "&":
                continue
            rows.append(row)
            row = []
            if sep == "\\end":
                break
            if sep != "\\\\" or len(rows) * len(rows[0]) > MAX_ITEMS:
                raise LatexError("malformed matrix")
        if self.raw_arg() != env or len({len(r) for r in rows}) != 1:
            raise LatexError("malformed matrix")
        m = sympy.ImmutableMatrix(rows)
        return m.det() if env == "vmatrix" else m


def parse_expr(text: str):
    """One expression (or matrix) as a sympy object; raises LatexError or TooLarge."""
    try:
        return _Parser(text).parse()
    except (LatexError, TooLarge):
        raise
    except (TypeError, ValueError, AttributeError, ZeroDivisionError, sympy.SympifyError) as exc:
        # sympy refuses some well-formed but meaningless input, e.g. a matrix plus a number
        raise LatexError(f"cannot build {text[:40]!r}: {exc}") from exc


def _split_top(text: str, seps: tuple[str, ...], found: list | None = None) -> list[str]:
    """Split at any of seps outside brackets (any of ([{ closes any of )]}); seps go to found."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        depth += (text[i] in "([{") - (text[i] in ")]}")
        sep = depth == 0 and next((s for s in seps if text.startswith(s, i) and not (
            s[-1].isalpha() and text[i + len(s):i + len(s) + 1].isalpha())), None)
        if sep:
            parts.append(text[start:i])
            if found is not None:
                found.append(sep)
            start = i = i + len(sep)
        else:
            i += 1
    return parts + [text[start:]]


def _wrapped(text: str) -> bool:
    """True when the first character's bracket closes at the last character."""
    depth = 0
    for i, c in enumerate(text):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return i == len(text) - 1
    return False


def _expand_pm(text: str) -> list[str]:
    """1\\pm\\sqrt2 -> [1+\\sqrt2, 1-\\sqrt2]; all signs in one answer move together (a±b∓c)."""
    if not _PM.search(text):
        return [text]
    return [_PM.sub(lambda m: "+" if m.group() == "\\pm" else "-", text),
            _PM.sub(lambda m: "-" if m.group() == "\\pm" else "+", text)]


def _items(text: str) -> tuple:
    items = [p for s in _split_top(text, (",",)) for p in _expand_pm(s.strip())]
    if len(items) > MAX_ITEMS or not all(items):
        raise LatexError("too many or empty items")
    return tuple(parse_answer(s) for s in items)


def parse_answer(text: str):
    """A normalised answer as a sympy object or a tagged tuple: ("union"|"set"|"list"|"tuple"|"chain",
    items), ("eq", lhs, rhs), ("rel", ops, sides) or ("interval", lo_closed, lo, hi, hi_closed)."""
    text = text.strip()
    if text in ("\\emptyset", "\\varnothing", "\\{\\}"):
        return ("set", ())
    if len(parts := _split_top(text, ("\\cup",))) > 1:
        return ("union", tuple(parse_answer(p) for p in parts))
    if len(_split_top(text, (",",))) > 1:
        return ("list", _items(text))
    if len(sides := _split_top(text, ("=",))) > 2:  # x = 5+5+1 = 11: symbolic.py checks the sides agree
        return ("chain", tuple(parse_answer(s) for s in sides))
    if len(sides) > 1:  # a labelled (p,q)=(3,2) stands for its last side
        return parse_answer(sides[1]) if _LABELS.fullmatch(sides[0]) else ("eq", *map(parse_expr, sides))
    ops: list[str] = []
    sides = _split_top(text, tuple(_FLIP), ops)
    if ops:  # x > 2, -80 ≤ g ≤ 82 (normalise.py spells every relation as one of _FLIP)
        return ("rel", tuple(ops), tuple(parse_expr(s) for s in sides))
    if text.startswith("\\{") and text.endswith("\\}") and _wrapped(text[1:]):
        return ("set", _items(text[2:-2]))
    if text[:1] in "([" and text[-1:] in ")]" and _wrapped(text):
        ends = _split_top(text[1:-1], (",",))
        if len(ends) == 2 and text[0] + text[-1] != "()":  # (a,b) is a tuple or an open interval
            lo, hi = (parse_answer(e) for e in ends)
            return ("interval", text[0] == "[", lo, hi, text[-1] == "]")
        if len(ends) > 1:
            return ("tuple", _items(text[1:-1]))
    if _PM.search(text):
        return ("list", tuple(parse_expr(s) for s in _expand_pm(text)))
    return parse_expr(text)
