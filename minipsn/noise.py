"""Parameter-space noise on LoRA adapters: seeded perturb → sample → bit-exact restore.

    θ̃ = θ + σ·ε,   ε ~ N(0, I),   on the LoRA A and B weights of the target projections

(arXiv 2602.02555, Sec. 3: noise on the rollout policy's weights, the update on the clean
ones). The paper perturbs full weights of a 7B model; minipsn perturbs only the adapter,
which is what makes the perturbation cheap on one GPU. σ is absolute, as in the paper.

Noise is a pure function of (seed, parameter name): every tensor gets its own generator
seeded from both, so the same seed rebuilds the same noisy policy whatever the targets or
the order of parameters, and a per-row path can regenerate exactly the step path's noise.
The seed is logged every step for that reason. Restore copies back a saved clean tensor:
adding and subtracting σ·ε in floating point would not round-trip exactly.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Iterator

import torch

from minipsn.models import lora_parameters

_SEED_MOD = 2**63 - 1


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from integers and strings (Python's hash() is salted per process)."""
    data = "\x1f".join(str(p) for p in parts).encode()
    return (zlib.crc32(data) * 0x9E3779B1 + zlib.adler32(data)) % _SEED_MOD


def noise_for(param: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    """ε for one tensor: standard normal, same shape/device/dtype, a function of (seed, name)."""
    gen = torch.Generator(device=param.device).manual_seed(derive_seed(seed, name))
    return torch.randn(param.shape, generator=gen, device=param.device, dtype=torch.float32).to(param.dtype)


def row_seeds(step_seed: int, P: int, G: int, granularity: str) -> list[int]:
    """The noise seed of each of the N = P·G rows (prompt-major) for one step."""
    if granularity == "step":
        return [step_seed] * (P * G)
    elif granularity == "group":
        return [derive_seed(step_seed, "group", i // G) for i in range(P * G)]
    elif granularity == "rollout":
        return [derive_seed(step_seed, "row", i) for i in range(P * G)]
    else:
        raise ValueError(f"unknown noise granularity {granularity!r}; use step, group or rollout")


@contextmanager
def perturbed(model, sigma: float, seed: int, targets: str = "mlp") -> Iterator[dict[str, torch.nn.Parameter]]:
    """Add σ·ε(seed) to the LoRA weights of `targets` on enter; restore them bit-exactly on exit,
    also when the body raises. σ = 0 touches nothing (plain GRPO)."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    params = lora_parameters(model, targets)
    if sigma == 0:
        yield params
        return
    clean = {name: p.detach().clone() for name, p in params.items()}
    try:
        with torch.no_grad():
            for name, p in params.items():
                p.add_(noise_for(p, seed, name), alpha=sigma)
        yield params
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(clean[name])
