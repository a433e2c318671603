"""Out of memory: halve the batch and run the phase again, or stop with one line that says what to shrink.

Sampling retries with half the `rollout.batch_size`, the update with half the `grpo.micro_batch_tokens`, each
saying so in one line; the halved size stays for the rest of the run, and in its checkpoints (it lives in
`checkpoint.RunState`). The update runs again only while none of the batch's optimizer steps was applied: after
one, θ and AdamW's moments have moved and a retry would apply the batch twice, so `learner.learner_step` raises a
MemoryError, which is not caught here. Under torchrun the update never retries: the other ranks wait in its
collectives.
"""
from __future__ import annotations

import dataclasses

import torch

from minipsn.run import distributed as dist
from minipsn.run.checkpoint import RunState

SMALLEST_MICRO_BATCH_TOKENS = 64  # below this a learner micro-batch would not hold one row of a real model


def retry_halving(phase: str, state: RunState, fn):
    """`fn()` for `phase` (rollout or learner), halving its batch in `state` after each out-of-memory; `fn` reads
    the sizes from `state` when called."""
    while True:
        try:
            return fn()
        except torch.OutOfMemoryError:
            state.optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            halve(phase, state)


def halve(phase: str, state: RunState) -> None:
    """Halve the batch of `phase` in `state` and say so, or raise a MemoryError naming what to shrink."""
    if phase == "learner" and dist.world() > 1:
        raise MemoryError(f"out of memory in the update on rank {dist.rank()}; under torchrun the update cannot retry "
                          f"on one rank: lower grpo.micro_batch_tokens (now {state.grpo.micro_batch_tokens}) and resume") from None
    if phase == "rollout" and state.rollout.batch_size > 1:
        state.rollout = dataclasses.replace(state.rollout, batch_size=state.rollout.batch_size // 2)
        print(f"out of memory while sampling: rollout.batch_size → {state.rollout.batch_size}")
    elif phase == "learner" and state.grpo.micro_batch_tokens > SMALLEST_MICRO_BATCH_TOKENS:
        state.grpo = dataclasses.replace(state.grpo, micro_batch_tokens=state.grpo.micro_batch_tokens // 2)
        print(f"out of memory in the update: grpo.micro_batch_tokens → {state.grpo.micro_batch_tokens}")
    else:
        raise MemoryError(f"out of memory in the {phase} even at the smallest batch; use a smaller model, "
                          "rollout.max_new_tokens or grpo.group_size") from None
