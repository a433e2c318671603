"""The kit's reward against the field's: `python -m minipsn.rewards.field [--problems N]` (docs/verifier.md).

Builds completions with known verdicts from MATH-500's worked solutions (field_pairs): each solution as it
is (right), the same with its final box changed, hedged (two boxes offered as alternatives, a chain whose
sides differ, a set, a disjunction in four notations), corrected by a later box (right) or spoiled by one,
and with its boxes removed (right) or removed and changed. audit() grades every pair with each of the kit's
scorers (the default math-verify verifier and extraction, strict, both, and the kit's own extraction) and
with TRL's accuracy_reward (trl.rewards, Math-Verify's extraction with TRL's settings; the gold is given as
$gold$), then counts, per scorer and per form, agreement with the known verdicts (false positives: wrong
completions paid; false negatives: right ones not paid) and with TRL. A truncated completion is never
graded by the kit (a rule, not a form here: TRL's reward does not see truncation).
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from minipsn.tasks.data import BUNDLED_DIR
from minipsn.verify.extract import box_spans

FORMS = {  # form -> known verdict
    "solution": True, "changed": False, "box-or": False, "chain": False, "set": False, "disjunction": False,
    "correction": True, "late-wrong": False, "unboxed": True, "unboxed-changed": False,
}
SCORERS = {  # name -> (reward.verifier, reward.extract)
    "math-verify": ("math-verify", "math-verify"), "strict": ("strict", "math-verify"),
    "both": ("both", "math-verify"), "kit-extract": ("math-verify", "kit"),
}
_OR = ("x = {w} \\lor x = {g}", "x = {w} \\mid x = {g}", "x = {w} \\quad x = {g}", "{w} \\text{{ or }} {g}")
_CORRECT = "\n\nWait, that is not right. Checking the last step again, the answer is $\\boxed{{{g}}}$."
_SPOIL = "\n\nWait, let me check that again. Redoing the last step gives $\\boxed{{{w}}}$."


def wrong_answer(gold: str, golds: list[str], i: int) -> str:
    """A value unequal to gold: gold + 1 for an integer, else the next problem's gold spelt differently."""
    if re.fullmatch(r"-?\d+", gold.strip()):
        return str(int(gold) + 1)
    key = lambda s: re.sub(r"\s|\\[!,;]", "", s)
    others = (golds[(i + j) % len(golds)] for j in range(1, len(golds)))
    return next(other for other in others if key(other) != key(gold))


def unbox(text: str, last: str | None = None) -> str:
    """text with every box replaced by its content (the last one's by `last` when given)."""
    spans = [s for s in box_spans(text) if s[2] is not None]
    for k, (start, end, content) in enumerate(reversed(spans)):
        text = text[:start] + (last if k == 0 and last is not None else content) + text[end:]
    return text


def forms(solution: str, gold: str, wrong: str, i: int) -> dict[str, str]:
    """Each form's completion for one problem (i picks the disjunction's notation)."""
    start, end, _ = [s for s in box_spans(solution) if s[2] is not None][-1]
    in_math = solution[:start].count("$") % 2 == 1  # the box sits inside $...$: a second box needs $ ... $ too
    put = lambda inner: solution[:start] + inner + solution[end:]
    box = lambda x: f"\\boxed{{{x}}}"
    # with a number or math after the box (the gold restated, a check) an unboxed change may still be right
    settled = not re.search(r"[\d\\]", solution[end:])
    return {"solution": solution, "changed": put(box(wrong)),
            "box-or": put(box(wrong) + ("$ or $" if in_math else " or ") + box(gold)),
            "chain": put(box(f"x = {wrong} = {gold}")), "set": put(box(f"\\{{{wrong}, {gold}\\}}")),
            "disjunction": put(box(_OR[i % len(_OR)].format(w=wrong, g=gold))),
            "correction": put(box(wrong)) + _CORRECT.format(g=gold), "late-wrong": solution + _SPOIL.format(w=wrong),
            "unboxed": unbox(solution), **({"unboxed-changed": unbox(solution, wrong)} if settled else {})}


def field_pairs(rows: list[dict]) -> list[dict]:
    """{id, form, completion, gold, label} for every form of every row with a worked solution."""
    rows = [r for r in rows if r.get("solution") and any(s[2] for s in box_spans(r["solution"]))]
    golds = [r["answer"] for r in rows]
    return [{"id": r["id"], "form": form, "completion": text, "gold": r["answer"], "label": FORMS[form]}
            for i, r in enumerate(rows) for form, text in forms(r["solution"], r["answer"], wrong_answer(
                r["answer"], golds, i), i).items()]


def trl_verdicts(pairs: list[dict]) -> list[bool | None]:
    """TRL's accuracy_reward of each pair (None: TRL cannot parse the gold and skips the pair)."""
    import logging
    import warnings

    from trl.rewards import accuracy_reward

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    with warnings.catch_warnings():  # sympy's deprecation notes on Math-Verify's percent readings
        warnings.simplefilter("ignore")
        rewards = accuracy_reward([[{"role": "assistant", "content": p["completion"]}] for p in pairs],
                                  [f"${p['gold']}$" for p in pairs])
    return [None if r is None else r == 1.0 for r in rewards]


def kit_verdicts(pairs: list[dict], verifier: str, extract: str, timeout: float = 3.0) -> list[bool]:
    """The kit's correctness of each pair with reward.verifier and reward.extract (rewards.correctness_rewards)."""
    from minipsn.rewards import correctness_rewards

    return [r == 1.0 for r in correctness_rewards([p["completion"] for p in pairs], [p["gold"] for p in pairs],
                                                  [False] * len(pairs), timeout=timeout, verifier=verifier,
                                                  extract=extract)]


def audit(pairs: list[dict], timeout: float = 3.0) -> dict:
    """Per scorer (SCORERS and "trl"): agreement with the known verdicts, false positives and negatives (by
    form), and agreement with TRL; "vs_trl": the default scorer's disagreements with TRL, counted by form."""
    from minipsn.verify import warm_up

    warm_up()
    verdicts = {name: kit_verdicts(pairs, v, e, timeout) for name, (v, e) in SCORERS.items()}
    trl = trl_verdicts(pairs)
    verdicts["trl"] = [bool(t) for t in trl]
    seen = [i for i, t in enumerate(trl) if t is not None]
    out = {"pairs": len(pairs), "trl_skipped": len(pairs) - len(seen), "scorers": {}}
    for name, got in verdicts.items():
        fp = Counter(p["form"] for p, v in zip(pairs, got) if v and not p["label"])
        fn = Counter(p["form"] for p, v in zip(pairs, got) if p["label"] and not v)
        out["scorers"][name] = {"agree": sum(v == p["label"] for p, v in zip(pairs, got)),
                                "fp": sum(fp.values()), "fn": sum(fn.values()), "fp_by_form": dict(fp),
                                "fn_by_form": dict(fn), "agree_trl": sum(got[i] == trl[i] for i in seen)}
    default = verdicts["math-verify"]
    out["vs_trl"] = dict(Counter(f"{pairs[i]['form']}: kit {'right' if default[i] else 'wrong'}, trl "
                                 f"{'right' if trl[i] else 'wrong'}" for i in seen if default[i] != trl[i]))
    out["examples"] = {}
    for i in seen:
        key = f"{pairs[i]['form']}: kit {'right' if default[i] else 'wrong'}, trl {'right' if trl[i] else 'wrong'}"
        if default[i] != trl[i] and key not in out["examples"]:
            out["examples"][key] = {"id": pairs[i]["id"], "gold": pairs[i]["gold"],
                                    "tail": pairs[i]["completion"][-160:]}
    return out


def markdown(report: dict) -> str:
    """The report as the tables of docs/verifier.md."""
    n, lines = report["pairs"], []
    lines += [f"{report['pairs']} pairs ({report['trl_skipped']} with a gold TRL cannot parse, left out of the "
              "TRL column)", "", "| scorer | agree with the known verdicts | false positives | false negatives "
              "| agree with TRL |", "|---|---:|---:|---:|---:|"]
    seen = n - report["trl_skipped"]
    for name, s in report["scorers"].items():
        fp = ", ".join(f"{k} {v}" for k, v in sorted(s["fp_by_form"].items()))
        fn = ", ".join(f"{k} {v}" for k, v in sorted(s["fn_by_form"].items()))
        lines.append(f"| {name} | {s['agree']}/{n} | {s['fp']}{f' ({fp})' if fp else ''} | {s['fn']}"
                     f"{f' ({fn})' if fn else ''} | {s['agree_trl']}/{seen} |")
    lines += ["", "| the default scorer vs TRL | pairs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(report["vs_trl"].items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minipsn.rewards.field", description=__doc__.split("\n")[0])
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, no usage block
    parser.add_argument("--data", default=str(BUNDLED_DIR / "math500_test.jsonl"), help="MATH-500 with solutions")
    parser.add_argument("--problems", type=int, default=0, help="the first N problems (0: all)")
    parser.add_argument("--json", help="also write the whole report (with an example of each disagreement) here")
    args = parser.parse_args(argv)
    if args.problems < 0:
        parser.error(f"--problems must be >= 0, got {args.problems}")
    path = Path(args.data)
    if not path.is_file():
        parser.error(f"{path} not found: give --data a MATH-500 jsonl with worked solutions")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    report = audit(field_pairs(rows[:args.problems or len(rows)]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
