"""Supervised warm start of the tiny model on worked solutions of the synthetic task.

RL needs a policy that sometimes succeeds: with pass@1 = 0 every group has equal rewards and
zero advantage. A short pass of next-token cross-entropy on (prompt → worked solution) pairs,
loss on the solution tokens only, brings the tiny model to a pass@1 clearly between 0 and 1.
The number of steps is the knob: too many and RL has nothing left to improve.
"""
from __future__ import annotations

import random

import torch

from minipsn.data import format_prompt

WARM_STEPS = 400
WARM_BATCH = 64
WARM_LR = 4e-3


def sft_batch(tok, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 on prompt and padding)."""
    rows, labels = [], []
    for r in records:
        prompt = tok(format_prompt(tok, r["problem"], "chat"), add_special_tokens=False)["input_ids"]
        answer = tok(r["solution"] + tok.eos_token, add_special_tokens=False)["input_ids"]
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
               batch: int = WARM_BATCH, seed: int = 0) -> list[float]:
    """Train all weights of `model` in place for `steps` steps; returns the loss curve."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        ids, mask, labels = sft_batch(tok, rng.sample(records, batch))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses
