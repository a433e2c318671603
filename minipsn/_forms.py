"""String-level answer forms for the verifier: lists, separators, delimiters, several boxes, ≈.

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
- Several boxes at the end of a completion, separated only by ",", ";", spaces or $, are one list
  answer: "\\boxed{2}, \\boxed{3}" answers "2, 3". A word between boxes ends the answer at the last
  box: "\\boxed{1}, finally \\boxed{2}" is 2, and MATH's solutions write "\\boxed{28} or
  \\boxed{28_9}" for two spellings of one answer and "\\boxed{1} and \\boxed{9}" with gold 9.
- "A ≈ B": B is the answer when the other answer is written with decimals, else A (a label such as
  "x" in "x ≈ 11" is skipped). Only one side is ever compared, so a chain of guesses gains nothing.
"""

import re

LIST_SEP = "\x00"  # a comma that normalise() must keep as a list separator, never thousands
_SPACE = r"(?:\s|~|\\[ ,;:!]|\\q?quad(?![a-zA-Z]))"
_LIST_COMMA = re.compile(rf",{_SPACE}+(?:(?:and|or){_SPACE}+)?")
_THIN_THOUSANDS = re.compile(r"(?<=\d),\\!(?=\d{3}(?!\d))")  # 10,\!080: MATH's thousands spelling
_WORD_SEP = re.compile(r"(?:,\s*)?\s+(?:and|or)\s+|\s*(?<!\\);\s*")
_SAID = re.compile(r"(?i)^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*")
_DELIMS = re.compile(r"(?<!\\)\\[()\[\]]")
THOUSANDS = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL_COMMA = re.compile(r"(-?\d+),(\d+)")
_POINT_NUMBER = re.compile(r"[+-]?\d*\.\d+")
_BOX_GAP = re.compile(r"(?:\s|\$|,|;|\\quad|\\qquad)*")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_APPROX = re.compile(r"≈|\\approx(?![a-zA-Z])")
_LABEL = re.compile(r"(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?(?:\([a-z]\))?")


def prepare(s: str) -> str:
    """Before spacing is dropped: delimiters and a leading "the answer is" go, list commas become
    LIST_SEP, 10,\\!080 becomes 10,080, and "and" / "or" / ";" between items become LIST_SEP (not
    inside words answers)."""
    s = _SAID.sub("", _DELIMS.sub(" ", _THIN_THOUSANDS.sub(",", s)).strip(), count=1)
    s = _LIST_COMMA.sub(LIST_SEP, s)
    if not re.fullmatch(r"[\sA-Za-z\x00]*", s):  # words stay words: "Evelyn and Navin"
        s = _WORD_SEP.sub(LIST_SEP, s)
    return s


def decimal_comma(pred: str, gold: str) -> str:
    """Normalised pred with a decimal comma read as a point, where the rules above allow it."""
    m = _DECIMAL_COMMA.fullmatch(pred)
    if m and not THOUSANDS.fullmatch(pred) and _POINT_NUMBER.fullmatch(gold):
        return f"{m[1]}.{m[2]}"
    return pred


def _brace_matches(text: str) -> dict[int, int]:
    """Index of each "{" -> index of its "}" in one pass (unclosed braces are absent)."""
    stack, match = [], {}
    for i, c in enumerate(text):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
    return match


def box_spans(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, content or None) of every \\boxed/\\fbox in order."""
    match, out = _brace_matches(text), []
    for m in _BOX.finditer(text):
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            content, end = (text[j + 1:match[j]].strip(), match[j] + 1) if j in match else ("", j)
        else:  # "\boxed 5": up to the closing $ or end of line, as in the MATH reference code
            content = re.split(r"[$\n]", text[j:], maxsplit=1)[0]
            end, content = j + len(content), content.strip()
        out.append((m.start(), end, content or None))
    return out


def join_boxes(text: str, spans: list[tuple[int, int, str | None]]) -> str | None:
    """The answer of a completion's boxes (start, end, content): the last non-empty one, joined
    with the boxes before it when only separators lie between them."""
    filled = [b for b in spans if b[2]]
    if not filled:
        return None
    run = [filled[-1]]
    for box in reversed(filled[:-1]):
        if not _BOX_GAP.fullmatch(text[box[1]:run[0][0]]):
            break
        run.insert(0, box)
    return ", ".join(b[2] for b in run)


def pick_approx(s: str, other_decimal: bool) -> str:
    """Each top-level item "A ≈ B" -> B when other_decimal, else A (a leading label is skipped)."""
    from minipsn._latex import _split_top  # sympy-free helper, imported late to keep this cheap

    if not _APPROX.search(s):
        return s
    items = []
    for item in _split_top(s, (",",)):
        sides = [x.strip() for x in _split_top(item, ("≈", "\\approx"))]
        if len(sides) > 1 and (not sides[0] or _LABEL.fullmatch(sides[0].split("=")[-1].strip())):
            sides = sides[1:]  # x ≈ 11: "x" names the answer; "≈ 8.24" has no exact side
        items.append(sides[-1] if other_decimal else sides[0])
    return ",".join(items)
