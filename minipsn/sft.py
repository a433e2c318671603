"""Supervised warm start of the tiny model on demonstrations of the synthetic task.

RL needs a policy that sometimes succeeds (with pass@1 = 0 every group has equal rewards and
zero advantage) and that has something to learn. The warm start gives it both: next-token
cross-entropy on (prompt → demonstration) pairs, loss on the demonstration tokens only, teaches
the arithmetic well, but in a fraction `early_frac` of the demonstrations the writer stops part
way (after the first step, on the default two-step task) and boxes that intermediate number: the
habit of answering before the work is done. The warm-started model picks up both styles, so its
pass@1 sits well between 0 and 1, and a verifiable reward is the only signal that says finishing
the computation pays.
"""
from __future__ import annotations

import random

import torch

from minipsn.data import format_prompt

WARM_STEPS = 600
WARM_BATCH = 64
WARM_LR = 4e-3
EARLY_FRAC = 0.5


def demonstration(record: dict, rng: random.Random, early_frac: float = EARLY_FRAC) -> str:
    """The worked solution, or with probability `early_frac` its first steps (at least one, not
    all) followed by a boxed intermediate number."""
    lines = record["solution"].split("\n")[:-1]  # the steps; the last line boxes the answer
    if len(lines) < 2 or rng.random() >= early_frac:
        return record["solution"]
    kept = lines[: rng.randint(1, len(lines) - 1)]
    return "\n".join(kept) + f"\nThe answer is \\boxed{{{kept[-1].split('= ')[-1]}}}."


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
               batch: int = WARM_BATCH, seed: int = 0, early_frac: float = EARLY_FRAC) -> list[float]:
    """Train all weights of `model` in place for `steps` steps; returns the loss curve."""
    if len(records) < batch:
        raise ValueError(f"the warm start draws {batch} problems a step: give it at least {batch} (data.n_train)")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        chosen = rng.sample(records, batch)
        ids, mask, labels = sft_batch(tok, [r["problem"] for r in chosen],
                                      [demonstration(r, rng, early_frac) for r in chosen])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
