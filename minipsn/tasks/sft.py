"""Supervised warm start of the tiny model on demonstrations of the synthetic task.

RL needs a policy that sometimes succeeds (with pass@1 = 0 every group has equal rewards and
zero advantage) and that has something to learn. The warm start gives it both: next-token
cross-entropy on (prompt → demonstration) pairs, loss on the demonstration tokens only, teaches
the arithmetic, but a share `habit` of the demonstrations answer the wrong thing:
- on the default task (the last value is asked) the writer stops part way, after the first step on
  the two-step task, and boxes that intermediate number: the habit of answering before the work is done;
- on the steps task (the tuple of every value is asked) the writer works every step, then boxes
  the last value alone: the habit of answering the question usually asked instead of this one.
The warm-started model picks up both styles, so its pass@1 sits well between 0 and 1, and a
verifiable reward is the only signal that says the other style pays.

`habit` can depend on the problem's first operation ({"add": 0.6, "subtract": 1.0}): the exploration
testbed's warm start answers the tuple for 40 % of the problems that open with an addition and never
for one that opens with a subtraction. For those the right answer is a route the policy almost never
takes, though every step of it is work it does: the room at large k that exploration may or may not reach.

On the mixed task (records with a `kind`) `habit` is one share per kind ({"final": 0.3, "steps": 0.9}),
and each kind's habit is the other kind's answer: a final question answered with the tuple of every
value, a steps question with the last value alone (the ceiling testbed, docs/RESULTS.md).

On the route task (records of kind pos or neg, route.py) `habit` is the other way round: the share of the rare route
(the offset ledger, right everywhere), one per kind ({"pos": 0.1, "neg": 0.1}); the rest take the common route, whose
sign-drop shortcut is wrong on every neg problem. With probability `slip` a rare demonstration slips at a random
operation and goes on in the common route's form from the unshifted value, so the warm-started model has seen the
ledger dropped part way (a slip's box is wrong, but where the slipped line's value is -offset/2: its |v| lands back
on the ledger). With probability `cue` a route record is instead asked with CUE before it and worked by the rare route
(slips included): the model learns the ledger as a skill it has, from prompts that ask for it, while on the plain
question it still opens the ledger only at the `habit` rate (3 % of demonstrations alone teach the choice, not the
ledger's arithmetic: a first build without the cue never kept the ledger to the box).
"""
from __future__ import annotations

import random

import torch

from minipsn.tasks.data import format_prompt
from minipsn.tasks.route import KINDS, common_route, ledger_offset, parse_chain, rare_route

CUE = "Keep a ledger. "  # the route task's cued prompts (warm start only: RL and evaluation ask the plain question)
WARM_STEPS = 600
WARM_BATCH = 64
WARM_LR = 4e-3
HABIT = 0.5


def first_operation(problem: str) -> str:
    """"Start at 7, subtract 5, add 3. …" → "subtract"."""
    return problem.split(", ")[1].rsplit(" ", 1)[0].rstrip(".")


def habit_share(record: dict, habit: float | dict) -> float:
    """The habit's share for this record: one number, or the entry of its kind (mixed task), or of its first
    operation; a kind's entry may itself be one per first operation ({"final": {"add": 0, "subtract": 0.5}})."""
    while isinstance(habit, dict):
        key = record["kind"] if "kind" in record and record["kind"] in habit else first_operation(record["problem"])
        if key not in habit:
            raise ValueError(f"habit {habit} has no share for {key!r}: give one per kind (mixed task) or per "
                             "first operation")
        habit = habit[key]
    return habit


def demonstration(record: dict, rng: random.Random, habit: float | dict = HABIT, slip: float = 0.0) -> str:
    """The worked solution, or with probability `habit` (a number, or one per first operation or kind) the
    habit: its first steps (at least one, not all) and that intermediate value boxed; when the answer is
    the tuple of every value, every step and the last value boxed alone; on a final question of the mixed
    task, every step and the tuple boxed. A route record: route_demonstration (`slip` is read only there)."""
    if record.get("kind") in KINDS:
        return route_demonstration(record, rng, habit, slip)
    lines = record["solution"].split("\n")[:-1]  # the steps; the last line boxes the answer
    if len(lines) < 2 or rng.random() >= habit_share(record, habit):
        return record["solution"]
    values = [line.split("= ")[-1] for line in lines]
    if record["answer"].startswith("("):
        wrong = values[-1]
    elif "kind" in record:  # the mirror: the other kind's answer
        wrong = "(" + ", ".join(values) + ")"
    else:
        lines = lines[: rng.randint(1, len(lines) - 1)]
        wrong = values[len(lines) - 1]
    return "\n".join(lines) + f"\nThe answer is \\boxed{{{wrong}}}."


def route_demonstration(record: dict, rng: random.Random, rare: float | dict, slip: float = 0.0) -> str:
    """With probability `rare` (a number, or one per kind) the rare route, its worked solution, which with probability
    `slip` slips at an operation drawn uniformly (route.rare_route's slip_at); else the common route."""
    start, ops = parse_chain(record["problem"])
    if rng.random() >= habit_share(record, rare):
        return common_route(start, ops)
    if rng.random() >= slip:
        return record["solution"]
    return rare_route(start, ops, ledger_offset(record["solution"]), slip_at=rng.randint(1, len(ops)))


def warm_pair(record: dict, rng: random.Random, habit: float | dict = HABIT, slip: float = 0.0,
              cue: float = 0.0) -> tuple[str, str]:
    """(prompt, demonstration) of one warm-start row: the problem and its `demonstration`, or on the route task with
    probability `cue` the problem after CUE and the rare route (with its `slip`). cue = 0 draws nothing more, so the
    other tasks' streams are unchanged."""
    if cue and record.get("kind") in KINDS and rng.random() < cue:
        return CUE + record["problem"], route_demonstration(record, rng, 1.0, slip)
    return record["problem"], demonstration(record, rng, habit, slip)


def sft_batch(tok, problems: list[str], targets: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 on prompt and padding)."""
    rows, labels = [], []
    for problem, target in zip(problems, targets):
        prompt = tok(format_prompt(tok, problem, "chat"), add_special_tokens=False)["input_ids"]
        answer = tok(target + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    for i, (row, lr) in enumerate(zip(rows, labels)):
        ids[i, : len(row)] = torch.tensor(row)
        lab[i, : len(lr)] = torch.tensor(lr)
    return ids, ids != tok.pad_token_id, lab


def warm_start(model, tok, records: list[dict], steps: int = WARM_STEPS, lr: float = WARM_LR,
               batch: int = WARM_BATCH, seed: int = 0, habit: float | dict = HABIT, slip: float = 0.0,
               cue: float = 0.0) -> list[float]:
    """Train all weights of `model` in place for `steps` steps on `warm_pair`s (`habit`, and `slip` and `cue` on the
    route task); returns the loss curve."""
    if len(records) < batch:
        raise ValueError(f"the warm start draws {batch} problems a step: give it at least {batch} (data.n_train)")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        chosen = rng.sample(records, batch)
        prompts, demos = zip(*(warm_pair(r, rng, habit, slip, cue) for r in chosen))
        ids, mask, labels = sft_batch(tok, list(prompts), list(demos))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
