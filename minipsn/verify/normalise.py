"""Normalisation: the canonical spelling of an answer, and its string-level forms (lists, ≈, ratios).

Runs before sympy (cheap, pure re). The rules, stated once:
- A comma followed by space ("32, 349", "-1, \\; -5") separates list items. A comma between digit
  groups with no space, first group 1-3 digits without a leading 0 and every later group exactly 3
  digits ("32,349", "10,\\!080"), is a thousands separator. So "32, 349" is a list of two numbers
  and never equals 32349.
- A decimal comma ("1000,99", "0,5", "1{,}5") is read only in the prediction, only when it is one
  number of the form digits,digits that cannot be a thousands group, and only when the gold is a
  number written with a decimal point. The gold keeps the datasets' convention (a comma separates
  items or thousands), so gold "1,3" (OlympiadBench: the answers 1 and 3) never equals "1.3".
- "and", "or" and ";" between items join a list like ","; words answers ("Evelyn and Navin") keep
  their words.
- \\( \\) and \\[ \\] are delimiters, dropped like $; so is a leading "the answer is" / "Answer:".
- (extract.py) Several boxes at the end of a completion, separated only by ",", ";", spaces or $, are one list
  answer: "\\boxed{2}, \\boxed{3}" answers "2, 3". A word between boxes ends the answer at the last
  box: "\\boxed{1}, finally \\boxed{2}" is 2, and MATH's solutions write "\\boxed{28} or
  \\boxed{28_9}" for two spellings of one answer and "\\boxed{1} and \\boxed{9}" with gold 9.
- A clock time "H:MM" or "H:MM:SS" (every later part two digits below 60: "8:34 p.m.", "05:00")
  equals only a clock time with the same numbers (05:00 = 5:00), and a.m./p.m. must agree when both
  answers give one. Any other "a:b" (or "a \\colon b") is the ratio a/b: 3:2 = 6:4 = 3/2 = 1.5,
  and 19:60 is a ratio. So 9:24 is a time, never the ratio 3:8.
- "A ≈ B": B is the answer when the other answer is written with decimals, else A (a label such as
  "x" in "x ≈ 11" is skipped). Only one side is ever compared, so a chain of guesses gains nothing.
"""

import re

LIST_SEP = "\x00"  # a comma that normalise() must keep as a list separator, never thousands
_SPACE = r"(?:\s|~|\\[ ,;:!]|\\q?quad(?![a-zA-Z]))"
_LIST_COMMA = re.compile(rf",{_SPACE}+(?:(?:and|or){_SPACE}+)?")
_THIN_THOUSANDS = re.compile(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))")  # 10,\!080 and 11,\! 111: MATH's thousands spelling
# alternatives and conjunctions in LaTeX: x = 12 \lor x = 13 is the list of both (never the last alone)
_LOGIC = re.compile(r"\\(?:lor|vee|land|wedge|mid)(?![a-zA-Z])")
_RELATION = r"(?:=|<|>|\\(?:le|ge|lt|gt|leq|geq|ne|neq)(?![a-zA-Z]))"
# two statements side by side, x = 12 \quad x = 13: spacing, then a name and a relation
_STATEMENT_GAP = re.compile(r"(?<=[\w})\]])(?:\s|~|\\[ ,;:!]|\\q?quad(?![a-zA-Z]))+"
                            rf"(?=(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{{?\w+\}}?)?(?:\([a-z]\))?\s*{_RELATION})")
_WORD_SEP = re.compile(r"(?:,\s*)?\s+(?:and|or)\s+|\s*(?<!\\);\s*")
_SAID = re.compile(r"(?i)^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*")
_DELIMS = re.compile(r"(?<!\\)\\[()\[\]]")
THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL_COMMA = re.compile(r"(-?\d+),(\d+)")
_POINT_NUMBER = re.compile(r"[+-]?\d*\.\d+")
_APPROX = re.compile(r"≈|\\approx(?![a-zA-Z])")
_LABEL = re.compile(r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([a-z]\))?")
_CLOCK = re.compile(r"(\d{1,2})((?::[0-5]\d){1,2})(?:[ap]\.?m\.?)?", re.I)
_MERIDIEM = re.compile(r"(?i)(?<![a-z])([ap])\.?\s*m(?![a-z])")
_RATIO = re.compile(r"([^:=<>≤≥≠,\x00{}]+):([^:=<>≤≥≠,\x00{}]+)")
_UNICODE = {"−": "-", "–": "-", "×": "\\times ", "·": "\\cdot ", "π": "\\pi ", "∞": "\\infty ",
            "√": "\\sqrt", "°": "", "∪": "\\cup ", "\\langle": "(", "\\rangle": ")", "{,}": ",",
            "\\colon": ":"}
_LONG_UNITS = (  # stripped after an answer wherever they appear
    "units?|square units|sq units|percent|per cent|pct|meters?|metres?|inches|inch|feet|foot|yards?|miles?|mph|"
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


def prepare(s: str) -> str:
    """Before spacing is dropped: delimiters and a leading "the answer is" go, list commas become
    LIST_SEP, 10,\\!080 becomes 10,080, and "and" / "or" / ";" between items, \\lor, \\vee, \\mid (also
    \\land, \\wedge) and the spacing between two statements become LIST_SEP (not inside words answers)."""
    s = _SAID.sub("", _DELIMS.sub(" ", _THIN_THOUSANDS.sub(",", s)).strip(), count=1)
    s = _LOGIC.sub(LIST_SEP, _LIST_COMMA.sub(LIST_SEP, s))
    if not re.fullmatch(r"[\sA-Za-z\x00]*", s):  # words stay words: "Evelyn and Navin"
        s = _WORD_SEP.sub(LIST_SEP, s)
    return _STATEMENT_GAP.sub(_statements, s)


def _statements(m: re.Match) -> str:
    """LIST_SEP where the spacing follows a statement of its own (x = 12 \\quad x = 13), else the spacing."""
    before = m.string[:m.start()].rsplit(LIST_SEP, 1)[-1]
    ends_open = re.search(rf"(?:{_RELATION}|[-+*/^_(\[{{,])\s*$", before)  # -2 \le x: the statement goes on
    return LIST_SEP if re.search(_RELATION, before) and not ends_open else m.group()


def decimal_comma(pred: str, gold: str) -> str:
    """Normalised pred with a decimal comma read as a point, where the rules above allow it."""
    m = _DECIMAL_COMMA.fullmatch(pred)
    if m and not THOUSANDS.fullmatch(pred) and _POINT_NUMBER.fullmatch(gold):
        return f"{m[1]}.{m[2]}"
    return pred


def clock(norm: str, raw: str) -> tuple | None:
    """((hours, minutes[, seconds]), "a" / "p" / "") of a normalised clock time, its a.m./p.m. read
    from the raw answer (normalise() drops \\text{ p.m.}); None when norm is no clock time."""
    m = _CLOCK.fullmatch(norm)
    if not m:
        return None
    meridiem = _MERIDIEM.search(raw[-200:])
    return tuple(int(x) for x in (m[1], *m[2][1:].split(":"))), meridiem[1].lower() if meridiem else ""


def ratio(norm: str) -> str:
    """A normalised ratio "3:5" as the fraction \\frac{3}{5}; anything else unchanged."""
    m = _RATIO.fullmatch(norm)
    return f"\\frac{{{m[1]}}}{{{m[2]}}}" if m else norm


def unwrap(s: str) -> str:
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
    s = re.sub(r"(?<![\w\\])np\.(?=[a-z]+\()", r"\\", s)  # Minerva's np.arcsin(10/13) is \arcsin(10/13)
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\.?", "", s)
    s = prepare(unwrap(_TEXT_NOTE_RE.sub("", _TEXT_UNIT_RE.sub("", s))))  # before spacing goes
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
    if THOUSANDS.fullmatch(s):  # 32,349 (32, 349 is a list: see the rules above)
        s = s.replace(",", "")
    s = re.sub(r"\{(-?\d{1,3}(?:,\d{3})+)\}", lambda m: "{" + m[1].replace(",", "") + "}", s)
    return ",".join(map(_number_item, s.split(LIST_SEP)))


def _number_item(s: str) -> str:
    """One item's base subscript dropped (52_8: the base is implied by the question) and a mixed number
    1\\frac{4}{5} read as 9/5, item by item: "\\boxed{15\\frac{39}{40}} or \\boxed{\\frac{639}{40}}" is one value."""
    s = re.sub(r"^(-?\d+)_\{?\d+\}?$", r"\1", s)
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{?(\d+)\}?\{?(\d+)\}?", s)
    if mixed and int(mixed[3]) < int(mixed[4]):
        sign, whole, num, den = mixed[1], int(mixed[2]), int(mixed[3]), int(mixed[4])
        s = f"{sign}\\frac{{{whole * den + num}}}{{{den}}}"
    return s


def pick_approx(s: str, other_decimal: bool) -> str:
    """Each top-level item "A ≈ B" -> B when other_decimal, else A (a leading label is skipped)."""
    from minipsn.verify.parse import _split_top  # imports sympy: only the worker calls this

    if not _APPROX.search(s):
        return s
    items = []
    for item in _split_top(s, (",",)):
        sides = [x.strip() for x in _split_top(item, ("≈", "\\approx"))]
        if len(sides) > 1 and (not sides[0] or _LABEL.fullmatch(sides[0].split("=")[-1].strip())):
            sides = sides[1:]  # x ≈ 11: "x" names the answer; "≈ 8.24" has no exact side
        items.append(sides[-1] if other_decimal else sides[0])
    return ",".join(items)
