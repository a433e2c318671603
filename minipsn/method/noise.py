"""Parameter-space noise on LoRA adapters: seeded perturb → sample → bit-exact restore.

    θ̃ = θ + σ·ε,   ε ~ N(0, I),   on the LoRA A and B weights of the target projections

(arXiv 2602.02555, Sec. 3: noise on the rollout policy's weights, the update on the clean
ones). The paper perturbs full weights and shares one draw per step; minipsn perturbs only the
adapter (cheap on one GPU) and also offers one draw per prompt group or per rollout: then
`noise_context` leaves the weights alone and forward hooks give each row of one batch its own
noisy adapter. σ is absolute, as in the paper.

Noise is a pure function of (seed, parameter name), so the same seed rebuilds the same noisy
policy whatever the targets, the order of parameters or the granularity; seeds are logged for
that reason. Restore copies back a saved clean tensor: adding and subtracting σ·ε in floating
point would not round-trip exactly.
"""
from __future__ import annotations

import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from minipsn.tasks.models import dense_weight, lora_parameters

_SEED_MOD = 2**63 - 1


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from integers and strings (Python's hash() is salted per process)."""
    data = "\x1f".join(str(p) for p in parts).encode()
    return (zlib.crc32(data) * 0x9E3779B1 + zlib.adler32(data)) % _SEED_MOD


def noise_for(param: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    """ε for one tensor: standard normal, same shape/device/dtype, a function of (seed, name)."""
    gen = torch.Generator(device=param.device).manual_seed(derive_seed(seed, name))
    return torch.randn(param.shape, generator=gen, device=param.device, dtype=torch.float32).to(param.dtype)


def perturb(p: torch.Tensor, name: str, sigma: float, seed: int) -> torch.Tensor:
    """A new tensor p + σ·ε(seed, name): the one perturbation every path uses (in-place `perturbed`,
    per-row `RowNoise`, the fast engine's fold), so they cannot differ by a bit."""
    return p.detach().clone().add_(noise_for(p, seed, name), alpha=sigma)


def row_seeds(step_seed: int, P: int, G: int, granularity: str, draws: int = 1) -> list[int]:
    """The noise seed of each of the N = P·G rows (prompt-major) for one step. `draws` N > 1 (granularity step):
    N draws a step, row p of every group (p = i mod G) taking draw p·N // G (C3PO's split)."""
    if granularity == "step" and draws > 1:
        if G % draws:
            raise ValueError(f"noise.draws={draws} must divide grpo.group_size={G}")
        return [derive_seed(step_seed, "draw", (i % G) * draws // G) for i in range(P * G)]
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
                p.copy_(perturb(p, name, sigma, seed))
        yield params
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(clean[name])


# ---------------------------------------------------------------- per-group / per-rollout noise

_LORA_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.(?P<kind>weight|bias)$")


@dataclass
class _NoisyAdapter:
    """The U noisy copies of one adapter of one LoRA layer: Ã_u = A + σ·ε_A(seed_u), same for B."""
    adapter: str
    A: torch.Tensor  # (U, R, in)
    B: torch.Tensor  # (U, out, R)


def lora_pairs(model, targets: str) -> list[tuple[torch.nn.Module, str, tuple[str, torch.Tensor], tuple[str, torch.Tensor]]]:
    """(LoRA layer, adapter, (name, A), (name, B)) of every adapter on the `targets` projections;
    plain LoRA only (no lora_bias, no DoRA)."""
    found: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for name, p in lora_parameters(model, targets).items():
        m = _LORA_NAME.match(name)
        if m is None or m["kind"] == "bias":
            raise ValueError(f"per-row noise supports plain LoRA A/B weights only, not {name!r} (lora_bias?)")
        found.setdefault((m["module"], m["adapter"]), {})[m["ab"]] = (name, p)
    out = []
    for (module_name, adapter), ab in found.items():
        module = model.get_submodule(module_name)
        if set(ab) != {"A", "B"} or adapter in getattr(module, "lora_variant", {}):
            raise ValueError(f"{module_name}: per-row noise needs plain LoRA (A and B, no DoRA) on adapter {adapter!r}")
        out.append((module, adapter, ab["A"], ab["B"]))
    return out


@torch.no_grad()
def perturbation_size(model, sigma: float, seed: int, targets: str = "mlp") -> float:
    """‖ΔW_noise‖_F / ‖W_base‖_F over the noised layers together, where ΔW_noise = s·(B̃Ã − BA) is
    what the noise adds to each layer's effective weight (Ã, B̃ = `perturb` of A, B with `seed`) and
    W_base the frozen base weight. ‖ΔW‖² is computed from 2R×2R Gram matrices, never out×in:
    ΔW = s·X·Y with X = [B̃, −B], Y = [Ã; A], so ‖ΔW‖² = s²·Σ (XᵀX) ∘ (YYᵀ). The base norms are
    dequantized once and cached on the model."""
    if sigma == 0:
        return 0.0
    cache = model.__dict__.setdefault("_minipsn_base_sq_norms", {})
    delta_sq = base_sq = 0.0
    for module, adapter, (name_a, a), (name_b, b) in lora_pairs(model, targets):
        x = torch.cat([perturb(b, name_b, sigma, seed), -b.detach()], dim=1).double()  # (out, 2R)
        y = torch.cat([perturb(a, name_a, sigma, seed), a.detach()], dim=0).double()   # (2R, in)
        delta_sq += float(module.scaling[adapter]) ** 2 * float(((x.T @ x) * (y @ y.T)).sum().clamp(min=0))
        key = f"{id(module)}"
        if key not in cache:
            cache[key] = float(dense_weight(module.get_base_layer().weight).double().pow(2).sum())
        base_sq += cache[key]
    return (delta_sq / base_sq) ** 0.5 if base_sq > 0 else 0.0


def _noisy_stack(p: torch.Tensor, name: str, sigma: float, seeds: list[int]) -> torch.Tensor:
    """(U, *p.shape): `perturb(p, name, σ, seed_u)` for each seed."""
    return torch.stack([perturb(p, name, sigma, seed) for seed in seeds])


def runs_of(idx: torch.Tensor) -> tuple[int, int, int] | None:
    """(u0, m, k) when idx is m runs of k equal, consecutive ids u0, u0+1, ... (e.g. whole groups
    or single rollouts in order), so weights are a view and rows a reshape; else None."""
    change = (idx[1:] != idx[:-1]).nonzero()
    k = int(change[0]) + 1 if change.numel() else idx.numel()
    if idx.numel() % k:
        return None
    m = idx.numel() // k
    expect = (int(idx[0]) + torch.arange(m)).repeat_interleave(k)
    return (int(idx[0]), m, k) if torch.equal(idx, expect) else None


class RowNoise:
    """Each row its own perturbed adapters, in one batched forward (granularity group or rollout).

    Forward hooks on the targeted peft LoRA layers add, for row r with seed s_r,
        scale · [(B + σε_B(s_r))(A + σε_A(s_r)) − BA] · x_r
    to the layer's output, i.e. turn its clean LoRA term into the noisy one of that row. The noisy
    A/B are built once per context for the U unique seeds (memory: U adapter copies), never per
    decode step. `select(rows)` says which of the N global rows the next forwards hold."""

    def __init__(self, model, sigma: float, seeds: list[int], targets: str = "mlp"):
        if sigma <= 0:
            raise ValueError(f"RowNoise needs sigma > 0, got {sigma}")
        self.seeds = list(seeds)  # (N,) each row's seed, for the metrics: any row's policy can be rebuilt
        self.unique_seeds = list(dict.fromkeys(self.seeds))  # (U,) in order of first row
        pos = {s: u for u, s in enumerate(self.unique_seeds)}
        self.index = torch.tensor([pos[s] for s in self.seeds])  # (N,) row → unique seed
        self.layers = self._build(model, sigma, targets)  # {LoRA layer module: [noisy adapters]}
        self._handles: list = []
        self.select(torch.arange(len(self.seeds)))

    def _build(self, model, sigma: float, targets: str) -> dict:
        layers: dict = {}
        for module, adapter, (name_a, a), (name_b, b) in lora_pairs(model, targets):
            noisy = _NoisyAdapter(adapter, _noisy_stack(a, name_a, sigma, self.unique_seeds),
                                  _noisy_stack(b, name_b, sigma, self.unique_seeds))
            layers.setdefault(module, []).append(noisy)
        return layers

    def select(self, rows: torch.Tensor) -> None:
        """The next forwards hold global rows `rows` (n,), in this order."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= len(self.seeds):
            raise ValueError(f"select(rows) needs row ids in [0, {len(self.seeds)}), got {rows.tolist()[:8]}...")
        self._idx = self.index[rows]  # (n,) unique-seed id of each row of the sub-batch
        self._plan = runs_of(self._idx)
        self._gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # fallback copies, per select

    def _weights(self, noisy: _NoisyAdapter) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(m, R, in), (m, out, R) noisy weights for m runs of k rows each, and k."""
        if self._plan is not None:
            u0, m, k = self._plan
            return noisy.A[u0 : u0 + m], noisy.B[u0 : u0 + m], k
        key = id(noisy)
        if key not in self._gathered:  # rows in no simple order: one copy per row, made once per select
            idx = self._idx.to(noisy.A.device)
            self._gathered[key] = (noisy.A.index_select(0, idx), noisy.B.index_select(0, idx))
        return (*self._gathered[key], 1)

    def _hook(self, module, args, kwargs, output):
        if module.disable_adapters:
            return None  # inside model.disable_adapter(): no LoRA term, so no noise either
        if module.merged:
            raise RuntimeError("per-row noise needs unmerged LoRA layers; unmerge the adapter first")
        x = args[0] if args else kwargs["x"]  # (n, t, in)
        if x.shape[0] != self._idx.numel():
            raise RuntimeError(f"a batch of {x.shape[0]} rows reached a noisy LoRA layer but select() was given "
                               f"{self._idx.numel()}; call row_noise.select(rows) before each sub-batch")
        delta = None
        for noisy in self.layers[module]:
            if noisy.adapter not in module.active_adapters:
                continue
            drop = module.lora_dropout[noisy.adapter]
            if module.training and getattr(drop, "p", 0.0) > 0:
                raise RuntimeError("per-row noise needs the model in eval mode when lora.dropout > 0")
            A, B, k = self._weights(noisy)
            xs = x.to(A.dtype)
            h = torch.bmm(xs.reshape(A.shape[0], -1, xs.shape[-1]), A.transpose(1, 2))  # (m, k·t, R)
            noisy_out = torch.bmm(h, B.transpose(1, 2)).reshape(*x.shape[:-1], -1)  # (n, t, out)
            clean = module.lora_B[noisy.adapter](module.lora_A[noisy.adapter](xs))  # (n, t, out)
            d = module.scaling[noisy.adapter] * (noisy_out - clean)
            delta = d if delta is None else delta + d
        return None if delta is None else output + delta.to(output.dtype)

    def attach(self) -> None:
        for module in self.layers:
            self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@contextmanager
def noise_context(model, sigma: float, seeds: list[int], targets: str = "mlp") -> Iterator[RowNoise | None]:
    """Sample N rows, row r with adapters perturbed by σ·ε(seeds[r]) (seeds from `row_seeds`).

    All seeds equal (granularity step) or σ = 0: the weights are perturbed in place (`perturbed`)
    and None is yielded. Otherwise a `RowNoise` is yielded: hooks apply each row's own noise and
    leave the weights untouched; pass it to `rollout.sample(..., row_noise=...)`. On exit, also
    by an exception, the weights are clean (bit-exact) and no hook remains."""
    if not seeds:
        raise ValueError("noise_context needs one seed per row, got none")
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0 or len(set(seeds)) == 1:
        with perturbed(model, sigma, seeds[0], targets):
            yield None
        return
    row_noise = RowNoise(model, sigma, seeds, targets)
    row_noise.attach()
    try:
        yield row_noise
    finally:
        row_noise.detach()
        row_noise.layers.clear()  # free the U noisy copies now, not when the caller drops the object
