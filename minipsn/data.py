"""Problems and prompts: the synthetic arithmetic task, benchmark loaders, prompt templates.

Every dataset yields records of one shape, `{"id": str, "problem": str, "answer": str}` (plus
`solution` where there is one), so training, rewards and evaluation never look at a source's
own field names.

The synthetic task is a seeded chain of integer operations ("Start at 7, add 5, multiply by
3. What number do you get?") with a worked solution ending in `\\boxed{}`. Its knobs
(`n_ops`, `max_operand`) set the difficulty; it lets the whole PSN-GRPO loop run offline on
a laptop with the same code path as GSM8K or MATH.
"""
from __future__ import annotations

import random

from minipsn.config import DataConfig

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

_OPS = (("add", "+"), ("subtract", "-"), ("multiply by", "*"))


def synthetic_problem(rng: random.Random, n_ops: int, max_operand: int) -> dict:
    """One chain of `n_ops` operations on integers in 1..max_operand, applied left to right."""
    value = rng.randint(1, max_operand)
    words, lines = [f"Start at {value}"], []
    for _ in range(n_ops):
        verb, sym = rng.choice(_OPS)
        x = rng.randint(1, max_operand)
        new = value + x if sym == "+" else value - x if sym == "-" else value * x
        words.append(f"{verb} {x}")
        lines.append(f"{value} {sym} {x} = {new}")
        value = new
    problem = ", ".join(words) + ". What number do you get?"
    solution = "\n".join(lines) + f"\nThe answer is \\boxed{{{value}}}."
    return {"problem": problem, "answer": str(value), "solution": solution}


def synthetic_split(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """The seeded synthetic task; `test` never repeats a `train` problem."""
    if split not in ("train", "test"):
        raise ValueError(f"synthetic split must be train or test, got {split!r}")
    rng = random.Random(f"synthetic-{seed}-{cfg.n_ops}-{cfg.max_operand}")
    seen: set[str] = set()
    records: dict[str, list[dict]] = {"train": [], "test": []}
    for name, size in (("train", cfg.n_train), ("test", cfg.n_test)):
        tries = 0
        while len(records[name]) < size:
            rec = synthetic_problem(rng, cfg.n_ops, cfg.max_operand)
            tries += 1
            if tries > 50 * size + 1000:
                raise ValueError(f"synthetic task too small for n_{name}={size}: raise data.max_operand or data.n_ops")
            if rec["problem"] in seen:
                continue
            seen.add(rec["problem"])
            rec["id"] = f"synthetic-{name}-{len(records[name]):05d}"
            records[name].append(rec)
        if name == split:
            return records[name]
    raise AssertionError("unreachable")


def format_prompt(tokenizer, problem: str, template: str) -> str:
    """The text the policy sees: chat (tokenizer's chat template) or plain (base models)."""
    if template == "chat":
        messages = [{"role": "user", "content": f"{problem}\n{INSTRUCTION}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif template == "plain":
        return f"Question: {problem}\n{INSTRUCTION}\nAnswer:"
    else:
        raise ValueError(f"unknown template {template!r}; use chat or plain")


def load_problems(cfg: DataConfig, split: str, seed: int = 0) -> list[dict]:
    """Records `{id, problem, answer}` of the configured dataset and split."""
    if cfg.dataset == "synthetic":
        return synthetic_split(cfg, split, seed)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
