"""The kit's answer extraction (reward.extract=kit, and the box reader of every extraction).

A completion that boxes is graded by its boxes only: its answer is the last run of boxes (\\boxed{...},
\\fbox{...}, \\boxed x). Boxes with nothing but separators between them (",", ";", spaces, $, \\quad,
"and", "or", \\text{and}, \\text{or}, \\lor, a label "x =") are one answer holding all their values: "\\boxed{2},
\\boxed{3}" is the list 2, 3 and "\\boxed{12} or \\boxed{13}" is 12, 13, right only for a gold of those two
values (or when both boxes spell one value). Any other word between two boxes ends the run: "\\boxed{12}.
Wait, recount: \\boxed{13}" is 13, as a reasoning trace corrects itself. So the reward depends on one final
answer: an earlier box never makes a completion right, and values offered together are graded together.
Without a box, and only when unboxed=True (reward.unboxed_answer), extract_answer() reads "#### N", else
the text after the last "answer is" / "answer:" / "final answer", else a closing sentence "... is X."
("so the total equals $\\frac{3}{4}$."; "The largest $n$ is 34." only with last_number=True), else the last
number (last_number=True; "costs 2,74 $" reads 2,74). The default extraction reads unboxed completions
with Math-Verify instead (judge.extract); see minipsn/verify/__init__.py.
"""

import re

# what may stand between two boxes of one answer: separators, the words of a list or of alternatives, and the
# label of the next box ("$x = \\boxed{-2}$ or $x = \\boxed{1}$")
_BOX_GAP = re.compile(r"(?:\s|\$|,|;|\\q?quad(?![a-zA-Z])|\\[,;: !]|\\lor(?![a-zA-Z])|\\vee(?![a-zA-Z])"
                      r"|\\text\s*\{\s*(?:and|or)\s*\}|\b(?:and|or)\b|(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*=)*")
_BOX = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_ANSWER_IS = re.compile(r"(?i)\banswer\s*(?:is|:)\s*:?")  # also "final answer is", "Answer:"
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# a decimal comma is read only in an amount before a currency sign ("2,74 $"); else a comma groups thousands
_LAST_NUMBER = re.compile(r"(?<![\w)\]}])-?(?:\d+,\d{1,2}(?=\s*(?:\\?\$|€|£))|\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|\.\d+)")
_AMOUNT = re.compile(r"-?\d+,\d{1,2}")
_INLINE = re.compile(r"(?<!\\)\$([^$]+)\$")
_VALUE = r"(-?\d[\d,.]*\d|-?\d|\$[^$]+\$)"
_EITHER = re.compile(rf"{_VALUE}\s*,?\s*(?:\bor\b|\\lor|\\vee)\s*{_VALUE}")  # 5 or 6, $a$ or $b$
_SENTENCE_SPLIT = re.compile(r"[.!?](?=\s|$)|\n")
_STATES = re.compile(r"=|\\(?:lor|vee|mid|q?quad)(?![a-zA-Z])|\bor\b")
# the closing sentence "... is $X$." / "... equals 34.": X is the answer (inline math or one token)
_CLOSING = re.compile(r"(?i)\b(?:is|are|equals|be)\s*:?\s*(\$\$?[^$]+\$\$?|\\\((.+?)\\\)|-?[\d.,/]*\d)"
                      r"(?:\s*(?:[a-zA-Z]+|\\?\$|€|£)\s*){0,2}[.!]?\s*$")  # up to two words or a currency sign
# "... $x \geq 5$ is the solution.": the inline math just before "is the (final) answer / solution"
_MATH_FIRST = re.compile(r"(?i)(\$\$?[^$]+\$\$?|\\\((.+?)\\\))\s*(?:is|are)\s+(?:the|our)\s+(?:final\s+)?"
                         r"(?:answer|solution|result)s?[.!]?\s*$")


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
    if not _BOX.search(text):
        return []
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


def boxed_contents(text: str) -> list[str | None]:
    """Content of every \\boxed/\\fbox in order; None for an unclosed or empty one."""
    return [content for _, _, content in box_spans(text)]


def extract_answer(text: str, last_number: bool = True, unboxed: bool = True) -> str | None:
    """Final answer in a completion: last \\boxed{} (or \\fbox{}, \\boxed x; boxes joined only by
    separators, "\\boxed{2}, \\boxed{3}", are one list), else (when unboxed) "#### N", else "the
    answer is ..." / "final answer: ...", else a closing "... is X." sentence, else the last number
    when last_number; None when nothing fits. unboxed=False insists on a box."""
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
    if stated := stated_answer(text, last_number):
        return stated
    if closing := _closing_sentence(text, last_number):
        return closing
    numbers = list(_LAST_NUMBER.finditer(text)) if last_number else []
    if not numbers:
        return None
    last = numbers[-1]
    # inside inline math that states an equation or alternatives ($x = 14 = 13$, $12 \lor 13$) the math is the
    # answer, checked as a whole as a box would be: its last number alone would let a chain or a disjunction pay
    math = next((m for m in _INLINE.finditer(text) if m.start() < last.start() < m.end()), None)
    if math and _STATES.search(math[1]):
        return math[1].strip()
    return last[0] if _AMOUNT.fullmatch(last[0]) else last[0].replace(",", "")


def stated_answer(text: str, last_number: bool = True, clear: bool = False) -> str | None:
    """What follows the last "the answer is" / "answer:" / "final answer" on its line: inline math, a number
    (before a word: "is 5 because ..." -> 5), a closing "... is X." sentence, else the words up to the
    sentence end; None when there is no such statement. clear=True: only inline math or a number."""
    said = list(_ANSWER_IS.finditer(text))
    if not said:
        return None
    tail = text[said[-1].end():].split("\n")[0].strip().strip("*").strip()
    inline = re.match(r"\$+([^$]+)\$|\\[(\[](.+?)\\[)\]]", tail)  # "the answer is $5$ apples" -> 5
    number = re.match(r"-?[\d.,/]*\d(?=\s+[a-zA-Z]|[.!]?$)", tail)  # "is 5 because ..." -> 5
    if clear:
        return (inline[1] or inline[2]).strip() if inline else number[0] if number else None
    closing = None if inline or number else _closing_sentence(tail, last_number)  # "The largest $n$ is 34."
    tail = (inline[1] or inline[2]) if inline else number[0] if number else closing or _SENTENCE_END.split(
        tail, maxsplit=1)[0]
    return tail.strip() or None


def offered_values(text: str) -> list[str]:
    """The values a completion's last sentence offers as alternatives ("This is 5 or 6.", "$a$ or $b$"), [] if
    none: a pick among them is one of several values."""
    sentences = [x for x in _SENTENCE_SPLIT.split(text.strip()[-500:]) if x.strip()]
    return [v.strip("$") for m in _EITHER.finditer(sentences[-1] if sentences else "") for v in m.groups()]


def _closing_sentence(text: str, numbers: bool) -> str | None:
    """X in a last line ending "... is X." ("The largest $n$ is 34.", "... equals $\\frac34$ cm."):
    inline math, or (when numbers: it is a last-number read) one number and at most two words (units)."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    last = lines[-1][-500:].strip().strip("*") if lines else ""
    m = _CLOSING.search(last) or _MATH_FIRST.search(last)
    if not m or not (numbers or m[1].startswith(("$", "\\("))):
        return None
    answer = m[2] if m[2] is not None else m[1].strip("$")
    return answer.strip() or None
