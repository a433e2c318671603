"""Rollout engines: which weights the perturbed policy π_θ̃ is sampled from (`rollout.engine`).

    fast   a plain (non-peft) copy of the base, each base weight dequantized once into the learner's compute
           dtype (`model.dtype`: bf16 on CUDA, fp32 on CPU; dense_copy.py builds it). Every adapted projection
           of the copy is a `SideLinear`, the learner's LoRA layer op for op:
               y = cast(x)·Wᵀ + b  (compute dtype, back to x's dtype),   y ← y + s·(x·Ã ᵀ)·B̃ᵀ  (fp32)
           with Ã = A + σ·ε_A and B̃ = B + σ·ε_B copied from `noise.perturb` into the layer's fp32 buffers
           each time the engine is entered (the clean adapter on exit). In bf16 the adapter is never folded
           into W: W + s·BA would round away any change under half a bf16 step of W (most of a small LoRA
           update, docs/RESULTS.md "The sampler samples the learner's policy"), so the sampler would lag the
           learner. An fp32 copy folds (exact to 2⁻²⁴ of W, and faster). Norms, embeddings, head and activations keep the learner's dtypes (fp32 under
           NF4: k-bit training upcasts them), so the sampler's logits are the learner's up to kernel order.
           On CUDA the one-token decode step runs on a static KV cache under torch.compile; each new
           shape is first checked against an eager teacher-forced pass (else: eager, one printed line).
    lean   the 4-bit base + the unmerged peft adapter (`noise.noise_context`), the learner's weights.
    hf     the same unmerged path, in whatever precision the base was loaded.
    auto   fast when the copy fits (CUDA: `torch.cuda.mem_get_info`, with headroom); on CPU fast, because
           the NF4 CPU forward dequantizes every weight on every call (see CPU_SPEEDUP).

Per-group / per-rollout noise (noise.granularity ≠ step) gives each row its own adapter through forward
hooks, so it always takes the unmerged path. The learner is not touched: 4-bit base + LoRA, gradient
checkpointing, chunked log-probs. Sampling uses `rollout.sample`/`rollout.decode` unchanged.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from minipsn.method import noise
from minipsn.run.config import Config
from minipsn.sampling import rollout
from minipsn.sampling.dense_copy import SideLinear, WeightRowNoise, base_of, copy_bytes, load_adapters, plain_copy
from minipsn.sampling.static_decode import StaticDecoder
from minipsn.tasks.models import dense_weight, lora_parameters, pick_dtype

# Rollout tokens/s, the dense fp32 copy over NF4 base + unmerged LoRA, tiny model, 64 rows × 64 tokens, 1 thread
# (docs/RESULTS.md, "Speed, CPU"). The reason auto picks fast on CPU; printed with the choice.
CPU_SPEEDUP = 1.9
# auto on CUDA keeps this much memory free besides the copy (KV cache, learner activations)
HEADROOM_FRAC, HEADROOM_MIN = 0.2, 2 * 2**30


def keep_cpu_4bit_unpacked(model) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight for a bf16 kernel (absmax rounded
    to bf16) at its first eval forward without grad, i.e. at the first rollout. Turned off here: the learner's
    backward then fails on repacked weights with a bias (q/k/v: "a view of a leaf Variable ... in-place"), the
    sampler would run another precision than the learner, and a repacked weight cannot be copied."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UnmergedEngine:
    """lean / hf: sample from the peft model itself; noise by `noise_context` (in place or per-row hooks)."""

    space = "lora"  # noise on the adapter only: the 4-bit base cannot take σ·ε

    def __init__(self, model, name: str = "lean"):
        self.model, self.name, self.stats = model, name, {}
        if next(model.parameters()).device.type == "cpu":
            keep_cpu_4bit_unpacked(model)  # else the learner's backward fails on the repacked weights

    @contextmanager
    def policy(self, sigma: float, seeds: list[int], targets: str) -> Iterator[tuple[torch.nn.Module, object]]:
        """Yields (model to sample from, row_noise for `rollout.sample`); clean again on exit."""
        device = next(self.model.parameters()).device
        t0 = time.perf_counter()
        with noise.noise_context(self.model, sigma, seeds, targets) as row_noise:
            _sync(device)
            self.stats = {"noise_in_s": time.perf_counter() - t0}
            yield self.model, row_noise
            t1 = time.perf_counter()
        _sync(device)
        self.stats["noise_out_s"] = time.perf_counter() - t1

    def rescore(self, ro, rcfg, targets: str, budget_tokens: int) -> torch.Tensor:
        """(N, T) log π_clean of the sampled tokens: this engine's sampler without noise."""
        return rollout.rescore(self.model, ro, rcfg, budget_tokens)

    def measure(self, ro, rcfg, targets: str, budget_tokens: int, sigma: float, seeds: list[int]):
        """`rollout.rescore_with_noise` on this engine: (log π_clean, log π_θ̃, exact KL), each (N, T); row r's noise
        is seeds[r]'s, applied by the same hooks or in-place perturbation as when it was sampled."""
        @contextmanager
        def noisy(rows):
            with noise.noise_context(self.model, sigma, [seeds[i] for i in rows.tolist()], targets) as row_noise:
                if row_noise is not None:
                    row_noise.select(torch.arange(len(rows)))
                yield

        return rollout.rescore_with_noise(self.model, noisy, ro, rcfg, budget_tokens)


class CopyEngine:
    """fast: sample from a plain copy of the base with the (perturbed) adapter as fp32 side paths. With
    `space="weight"` the noise goes on the copy's dense base weights of the target projections instead
    (W + σ·ε, the paper's form; the adapter stays clean), rebuilt from the base on exit: bit-exact."""

    name = "fast"

    def __init__(self, model, max_new_tokens: int, static_cache: bool | None = None, compile_step: bool | None = None,
                 space: str = "lora"):
        if space not in ("lora", "weight"):
            raise ValueError(f"unknown noise space {space!r}; use lora or weight")
        self.model, self.space = model, space
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        if not cuda:
            keep_cpu_4bit_unpacked(model)
        self.plain, self.sides = plain_copy(model)
        self.dtype = self.sides[0][0].weight.dtype  # the compute dtype of the base's matmuls
        self.copied_names = {n for _, adapters in self.sides for a in adapters for n in (a[0], a[2])}
        static = cuda if static_cache is None else static_cache
        compiled = cuda if compile_step is None else compile_step
        if compiled and not static:
            raise ValueError("compiling the decode step needs the static cache (static_cache=True)")
        self.sampler = StaticDecoder(self.plain, max_new_tokens, compiled, self.dtype) if static else self.plain
        self.stats = {}

    @contextmanager
    def policy(self, sigma: float, seeds: list[int], targets: str) -> Iterator[tuple[torch.nn.Module, None]]:
        """Load θ̃ = θ + σ·ε(seeds[0]) into the copy's side paths; yields (copy to sample from, None); the
        clean adapter θ on exit."""
        if sigma < 0:
            raise ValueError(f"noise sigma must be >= 0, got {sigma}")
        weight = sigma > 0 and self.space == "weight"
        if sigma > 0 and len(set(seeds)) > 1:
            if not weight:
                raise ValueError("the fast engine holds one adapter draw per step; per-group or per-rollout noise on "
                                 "the adapter needs the unmerged path (rollout.engine=lean)")
            yield from self._row_weight_noise(sigma, seeds, targets)
            return
        noisy = set(lora_parameters(self.model, targets)) if sigma > 0 and not weight else set()
        if noisy - self.copied_names:
            raise RuntimeError(f"noise targets not in the copy: {sorted(noisy - self.copied_names)[:3]}")
        t0 = time.perf_counter()
        try:
            load_adapters(self.sides, sigma, seeds[0] if seeds else 0, noisy)
            for side in self.weight_targets(targets) if weight else ():
                side.add_weight_noise(sigma, seeds[0] if seeds else 0)
            _sync(self.device)
            self.stats = {"noise_in_s": time.perf_counter() - t0}
            yield self.sampler, None
        finally:
            t1 = time.perf_counter()
            load_adapters(self.sides, 0.0, 0, set())
            _sync(self.device)
            self.stats["noise_out_s"] = time.perf_counter() - t1

    def _row_weight_noise(self, sigma: float, seeds: list[int], targets: str):
        """Weight-space noise with several draws (per group, per rollout, C3PO): each row its own W + σ·ε(seed of the
        row), through forward hooks on the copy (`WeightRowNoise`); yields (the plain copy, the hooks)."""
        t0 = time.perf_counter()
        row_noise = WeightRowNoise(self.weight_targets(targets), sigma, seeds)
        row_noise.attach()
        self.stats = {"noise_in_s": time.perf_counter() - t0}
        try:
            yield self.plain, row_noise
        finally:
            t1 = time.perf_counter()
            row_noise.detach()
            self.stats["noise_out_s"] = time.perf_counter() - t1

    def rescore(self, ro, rcfg, targets: str, budget_tokens: int) -> torch.Tensor:
        """(N, T) log π_clean of the sampled tokens: the copy with the clean adapter."""
        with self.policy(0.0, [0], targets):
            return rollout.rescore(self.plain, ro, rcfg, budget_tokens)

    def measure(self, ro, rcfg, targets: str, budget_tokens: int, sigma: float, seeds: list[int]):
        """`rollout.rescore_with_noise` on the copy: (log π_clean, log π_θ̃, exact KL), each (N, T). The noise is
        loaded for each pass of the noisy policy and taken out after it (one draw: seeds[0])."""
        @contextmanager
        def noisy(rows):
            with self.policy(sigma, [seeds[i] for i in rows.tolist()], targets) as (_, row_noise):
                if row_noise is not None:
                    row_noise.select(torch.arange(len(rows)))
                yield

        with self.policy(0.0, [0], targets):  # clean outside the noisy passes
            return rollout.rescore_with_noise(self.plain, noisy, ro, rcfg, budget_tokens)

    def weight_targets(self, targets: str) -> list[SideLinear]:
        """The copy's projections named by `targets` (mlp, attn, all): where weight-space noise goes."""
        from minipsn.tasks.models import TARGETS

        found = [side for side, _ in self.sides if side.proj in TARGETS[targets]]
        if not found:
            raise ValueError(f"the sampler's copy has no {targets} projections to put weight-space noise on")
        return found

    @torch.no_grad()
    def weight_noise_size(self, sigma: float, seed: int, targets: str) -> float:
        """‖σ·ε‖_F / ‖W‖_F over the target projections' base weights (noise.space=weight): `noise/delta_w_rel`."""
        noise_sq = base_sq = 0.0
        for side in self.weight_targets(targets):
            w = dense_weight(side.source).double()
            noise_sq += float(noise.noise_for(w.float(), seed, side.name).double().pow(2).sum()) * sigma**2
            base_sq += float(w.pow(2).sum())
        return (noise_sq / base_sq) ** 0.5 if base_sq > 0 else 0.0


def choose_engine(requested: str, device_type: str, per_row_noise: bool, quantized: bool, free_bytes: int | None = None,
                  total_bytes: int | None = None, need_bytes: int = 0) -> tuple[str, str]:
    """(engine name, reason). auto: fast on CUDA when `need_bytes` fits in free memory with headroom,
    else the unmerged path; fast on CPU (CPU_SPEEDUP). Per-row noise always takes the unmerged path."""
    unmerged = "lean" if quantized else "hf"
    if requested in ("lean", "hf"):
        return requested, "as configured"
    elif requested not in ("fast", "auto"):
        raise ValueError(f"unknown rollout.engine {requested!r}; use auto, fast, lean or hf")
    if per_row_noise:
        return unmerged, ("per-group/per-rollout noise needs per-row hooks on the unmerged adapter "
                          f"(rollout.engine={requested} → {unmerged})")
    if requested == "fast":
        return "fast", "as configured"
    if device_type == "cuda":
        headroom = max(HEADROOM_MIN, HEADROOM_FRAC * (total_bytes or 0))
        room = f"{need_bytes / 2**30:.1f} GiB copy, {(free_bytes or 0) / 2**30:.1f} GiB free"
        if free_bytes is not None and free_bytes >= need_bytes + headroom:
            return "fast", f"auto: the {room}"
        return unmerged, f"auto: no room for the {room} (+{headroom / 2**30:.1f} GiB headroom)"
    return "fast", f"auto on cpu: the dense copy sampled {CPU_SPEEDUP:.1f}× faster than NF4 + unmerged LoRA (tiny)"


def build_engine(model, name: str, max_new_tokens: int, space: str = "lora", **fast_kwargs):
    """An engine by name (no auto): fast → CopyEngine, lean/hf → UnmergedEngine (lora noise only)."""
    if name == "fast":
        return CopyEngine(model, max_new_tokens, space=space, **fast_kwargs)
    elif name in ("lean", "hf"):
        if space != "lora":
            raise ValueError(f"noise.space={space} needs the sampler's dense copy: use rollout.engine=fast (or auto)")
        return UnmergedEngine(model, name)
    else:
        raise ValueError(f"unknown engine {name!r}; use fast, lean or hf")


def make_engine(model, cfg: Config):
    """The engine `cfg.rollout.engine` asks for on this model and device; prints the choice once."""
    device = next(model.parameters()).device
    quantized = bool(getattr(base_of(model), "is_loaded_in_4bit", False))
    per_row = (cfg.noise.granularity != "step" or cfg.noise.draws > 1) and cfg.noise.sigma > 0
    free = total = None
    dtype = pick_dtype(cfg.model, device)
    if device.type == "cuda" and cfg.rollout.engine == "auto" and not per_row:
        free, total = torch.cuda.mem_get_info(device)
    name, why = choose_engine(cfg.rollout.engine, device.type, per_row, quantized, free, total,
                              copy_bytes(model, dtype))
    if cfg.noise.space == "weight" and cfg.noise.sigma > 0 and name != "fast":
        if cfg.rollout.engine != "auto":
            raise ValueError(f"noise.space=weight needs the sampler's dense copy; rollout.engine={cfg.rollout.engine} "
                             "has none: use rollout.engine=fast (or auto)")
        name, why = "fast", "noise.space=weight needs the dense copy"
    space = cfg.noise.space if cfg.noise.sigma > 0 else "lora"  # σ = 0 (evaluation) needs no copy to put noise on
    engine = build_engine(model, name, max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens), space)  # eval too
    what = {"fast": f"a {str(dtype).removeprefix('torch.')} copy of the base, the adapter beside it in float32",
            "lean": "4-bit base + unmerged LoRA", "hf": "base + unmerged LoRA"}[name]
    print(f"rollout engine: {name} ({what}; {why})")
    return engine
