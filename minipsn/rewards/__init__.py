"""Verifiable rewards for PSN-GRPO: plain functions of (completion, gold answer, truncated flag).

    r_i = correct_i + format_weight * formatted_i       (truncated completions: correct_i = r_trunc)

correct_i is 1.0 when the answer extracted from completion i (minipsn.verify.extract_answers: boxes
first, else Math-Verify's extraction, or the kit's with extract="kit") is equivalent to the record's gold
`answer` to `verifier` (minipsn.verify.is_equivalent: math-verify, strict or both; bounded by `timeout`),
else 0.0; an answer that offers several values is right only when the gold holds those values.
formatted_i is 1.0 when the completion holds exactly one non-empty \\boxed{...}.
A completion cut off at the generation limit gets `truncated_reward` instead of being graded: its
last number is usually an intermediate value, and rewarding it would favour rambling.
To change the reward, write a function with the RewardFn signature and pass it to the trainer;
build_reward_fn() is the default one. With `reward.overlong=soft` the trainer adds
overlong_penalty (DAPO: 0 … −1 over the last `reward.overlong_window` tokens before the limit) to
whatever the reward function returned.
"""

import re
from collections.abc import Callable

from minipsn.verify import EXTRACTS, VERIFIERS, boxed_contents, extract_answers, is_equivalent_many

RewardFn = Callable[[list[str], list[dict], list[bool]], list[float]]
"""(completions, records with at least "answer", truncated flags) -> one reward per completion."""


def correctness_reward(completion: str, answer: str, truncated: bool,
                       truncated_reward: float = 0.0, timeout: float = 3.0,
                       last_number: bool = True, unboxed: bool = True, verifier: str = VERIFIERS[0],
                       extract: str = EXTRACTS[0]) -> float:
    """1.0 if the answer extracted from completion is equivalent to `answer`, else 0.0;
    `truncated_reward` when the completion hit the length limit (truncated=True). unboxed=False
    insists on a \\boxed{} answer (`verify.extract_answers`)."""
    return correctness_rewards([completion], [answer], [truncated], truncated_reward, timeout, last_number, unboxed,
                               verifier=verifier, extract=extract)[0]


def correctness_rewards(completions: list[str], answers: list[str], truncated: list[bool],
                        truncated_reward: float = 0.0, timeout: float = 3.0, last_number: bool = True,
                        unboxed: bool = True, workers: int = 1, verifier: str = VERIFIERS[0],
                        extract: str = EXTRACTS[0]) -> list[float]:
    """correctness_reward of each completion, with the worker's requests (Math-Verify's extraction, the checks
    that reach sympy) on up to `workers` worker processes at once; workers=1 gives the same as one by one.
    A truncated completion is not read at all."""
    preds = extract_answers(["" if cut else t for t, cut in zip(completions, truncated)], extract, last_number,
                            unboxed, timeout, workers)
    return answer_rewards(preds, answers, truncated, truncated_reward, timeout, workers, verifier)


def answer_rewards(preds: list[str | None], answers: list[str], truncated: list[bool], truncated_reward: float = 0.0,
                   timeout: float = 3.0, workers: int = 1, verifier: str = VERIFIERS[0]) -> list[float]:
    """correctness of answers already extracted (None: no answer, wrong); truncated ones get truncated_reward."""
    todo = [i for i, (p, cut) in enumerate(zip(preds, truncated)) if p is not None and not cut]
    verdicts = is_equivalent_many([(preds[i], answers[i]) for i in todo], timeout, workers, verifier)
    right = {i for i, same in zip(todo, verdicts) if same}
    return [float(truncated_reward) if cut else float(i in right) for i, cut in enumerate(truncated)]


def format_reward(completion: str) -> float:
    """1.0 if the completion contains exactly one \\boxed{...} (or \\fbox{...}) and it is closed
    and non-empty, else 0.0."""
    boxes = boxed_contents(completion)
    braced = re.search(r"\\(?:boxed|fbox)\s*\{", completion)
    return 1.0 if len(boxes) == 1 and boxes[0] is not None and braced else 0.0


def build_reward_fn(format_weight: float = 0.0, truncated_reward: float = 0.0,
                    timeout: float = 3.0, last_number: bool = True, unboxed: bool = True,
                    workers: int = 1, verifier: str = VERIFIERS[0], extract: str = EXTRACTS[0]) -> RewardFn:
    """The default RewardFn: correctness_reward + format_weight * format_reward per completion
    (the sympy checks of a call on up to `workers` worker processes at once)."""

    def reward_fn(completions: list[str], records: list[dict],
                  truncated: list[bool]) -> list[float]:
        if not len(completions) == len(records) == len(truncated):
            raise ValueError(f"reward_fn got {len(completions)} completions, {len(records)} "
                             f"records and {len(truncated)} truncated flags; they must match")
        for record in records:
            if "answer" not in record:
                raise KeyError(f"reward record has no 'answer' field (keys: {sorted(record)})")
        correct = correctness_rewards(completions, [r["answer"] for r in records], truncated, 0.0, timeout,
                                      last_number, unboxed, workers, verifier, extract)
        return [shaped_reward(c, t, cut, format_weight, truncated_reward)
                for c, t, cut in zip(correct, completions, truncated)]

    return reward_fn


def overlong_penalty(lengths, max_len: int, window: int):
    """DAPO's soft overlong penalty of completions with `lengths` tokens (a tensor or a number) under
    the limit `max_len`: 0 up to max_len − window tokens, then linear down to −1 at max_len,
    clamp((max_len − window − length) / window, −1, 0). `reward.overlong=soft` adds it to the reward."""
    if not 1 <= window <= max_len:
        raise ValueError(f"overlong window must be in [1, {max_len}] tokens, got {window}")
    p = (max_len - window - lengths) / window
    return p.clamp(-1.0, 0.0) if hasattr(p, "clamp") else min(max(p, -1.0), 0.0)


def shaped_reward(correct: float, completion: str, truncated: bool, format_weight: float = 0.0,
                  truncated_reward: float = 0.0) -> float:
    """The default reward of one completion from the verifier's verdict `correct` (0 or 1)."""
    r = float(truncated_reward) if truncated else correct
    return r + format_weight * format_reward(completion) if format_weight else r
