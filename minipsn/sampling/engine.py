"""Rollout engines: which weights the perturbed policy π_θ̃ is sampled from (`rollout.engine`).

    fast   a plain (non-peft) copy of the base, each base weight dequantized once into the learner's compute
           dtype (`model.dtype`: bf16 on CUDA, fp32 on CPU). Every adapted projection of the copy is a
           `SideLinear`, the learner's LoRA layer op for op:
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

import copy
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from minipsn.method import noise
from minipsn.run.config import Config
from minipsn.sampling import rollout
from minipsn.sampling.static_decode import StaticDecoder
from minipsn.tasks.models import dense_weight, lora_parameters, pick_dtype

# Rollout tokens/s, the dense fp32 copy over NF4 base + unmerged LoRA, tiny model, 64 rows × 64 tokens, 1 thread
# (docs/RESULTS.md, "Speed, CPU"). The reason auto picks fast on CPU; printed with the choice.
CPU_SPEEDUP = 1.9
# auto on CUDA keeps this much memory free besides the copy (KV cache, learner activations)
HEADROOM_FRAC, HEADROOM_MIN = 0.2, 2 * 2**30


def _numel(p: torch.Tensor) -> int:
    state = getattr(p, "quant_state", None)
    return state.shape.numel() if state is not None else p.numel()


def base_of(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def copy_bytes(model, dtype: torch.dtype) -> int:
    """Bytes the fast engine's plain copy allocates: each 4-bit weight dequantized into `dtype` (the compute dtype),
    every other tensor of the base as the base holds it (under NF4 the norms, embeddings and head stay fp32: at
    1.5B the embedding alone is 0.47 GB more than at bf16), and each adapter's A and B as fp32 side buffers."""
    seen, total = set(), 0
    base = base_of(model)
    for name, t in [*base.named_parameters(), *base.named_buffers()]:
        if id(t) in seen:  # tied embeddings: one tensor
            continue
        seen.add(id(t))
        if "lora_" in name:
            total += t.numel() * 4
        elif getattr(t, "quant_state", None) is not None:
            total += _numel(t) * torch.finfo(dtype).bits // 8
        else:
            total += t.numel() * t.element_size()
    return total


class SideLinear(torch.nn.Module):
    """One projection of the sampler's copy: the base weight in the compute dtype, its adapters beside it in
    fp32, computed as the learner's peft LoRA layer computes them (see the module docstring). In fp32 the
    adapter is folded instead, W' = W + s·B̃Ã (`fold`): fp32 keeps the update to 2⁻²⁴ of W, and one matmul
    samples about 20 % faster on the CPU than three (docs/RESULTS.md)."""

    def __init__(self, source: torch.Tensor, bias: torch.Tensor | None, adapters: list[tuple[torch.Tensor, torch.Tensor, float]],
                 name: str = ""):
        super().__init__()
        weight = dense_weight(source).clone()
        self.__dict__["source"] = source  # the base weight (4-bit or dense), re-read to fold: not a parameter here
        self.name, self.dirty = name, False  # the base weight's parameter name (its noise key); noise added to W
        self.proj = name.replace(".base_layer", "").rsplit(".", 2)[-2] if name else ""  # q_proj, up_proj, ...
        self.weight = torch.nn.Parameter(weight, requires_grad=False)  # (out, in), compute dtype
        self.bias = None if bias is None else torch.nn.Parameter(bias.to(weight.dtype), requires_grad=False)
        self.scales = [s for _, _, s in adapters]
        self.fold = weight.dtype == torch.float32
        for i, (a, b, _) in enumerate(adapters):  # buffers: written in place, so CUDA graphs keep their addresses
            self.register_buffer(f"A{i}", a.detach().clone(), persistent=False)  # (R, in)
            self.register_buffer(f"B{i}", b.detach().clone(), persistent=False)  # (out, R)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def load(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take the adapters' (A, B) values: into the side buffers, or folded into the weight (`fold`)."""
        for i, (a, b) in enumerate(pairs):
            getattr(self, f"A{i}").copy_(a)
            getattr(self, f"B{i}").copy_(b)
        if self.fold or self.dirty:  # W rebuilt from the base as at the copy's build: bit-exact
            if not self.fold:  # bf16 after weight noise: rebuilt from the 4-bit base (no fp32 copy held on a GPU)
                w = dense_weight(self.source).to(torch.float32, copy=True)
            else:  # fp32 (the CPU): the base's values kept once, as a fold happens at every load
                if "base" not in self.__dict__:
                    self.__dict__["base"] = dense_weight(self.source).to(torch.float32, copy=True)
                w = self.__dict__["base"].clone()
            for (a, b), scale in (zip(pairs, self.scales) if self.fold else ()):
                w.addmm_(b.float(), a.float(), alpha=scale)
            self.weight.copy_(w)
            self.dirty = False

    @torch.no_grad()
    def add_weight_noise(self, sigma: float, seed: int) -> None:
        """W ← W + σ·ε(seed, name) (noise.space=weight), in fp32 and then in W's dtype; `load` takes it out."""
        eps = noise.noise_for(self.weight.float(), seed, self.name)
        self.weight.copy_(self.weight.float().add_(eps, alpha=sigma))
        self.dirty = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)
        if self.fold:
            return y
        for i, scale in enumerate(self.scales):
            a, b = getattr(self, f"A{i}"), getattr(self, f"B{i}")
            y = (y + scale * F.linear(F.linear(x.to(a.dtype), a), b)).to(y.dtype)  # the LoRA term in fp32
        return y


class WeightRowNoise:
    """Each row its own weight-space noise in one batched forward: forward hooks on the copy's target projections add
    σ·x_r·ε(s_r)ᵀ, turning W into W + σ·ε(s_r) for row r with seed s_r (the same ε as the one-draw path's
    `SideLinear.add_weight_noise`, applied as a side term in fp32). The U distinct ε are built once per context
    (memory: U copies of the target weights: fine on small models, the reason one draw a step is the default).
    `select(rows)` says which of the N rows the next forwards hold, as noise.RowNoise's."""

    def __init__(self, sides: list[SideLinear], sigma: float, seeds: list[int]):
        self.sigma, self.seeds = sigma, list(seeds)
        unique = list(dict.fromkeys(self.seeds))
        self.index = torch.tensor([unique.index(s) for s in self.seeds])  # (N,) row → distinct seed
        self.eps = {side: torch.stack([noise.noise_for(side.weight.float(), s, side.name) for s in unique])
                    for side in sides}  # (U, out, in) each
        self._handles: list = []
        self.select(torch.arange(len(self.seeds)))

    def select(self, rows: torch.Tensor) -> None:
        self._idx = self.index[torch.as_tensor(rows, dtype=torch.long).cpu()]
        self._plan = noise.runs_of(self._idx)  # rows in runs of one seed: ε is a view, x a reshape

    def _hook(self, module, args, output):
        x = args[0]  # (n, t, in)
        if x.shape[0] != self._idx.numel():
            raise RuntimeError(f"a batch of {x.shape[0]} rows reached a noisy layer but select() was given "
                               f"{self._idx.numel()}; call row_noise.select(rows) before each sub-batch")
        if self._plan is not None:
            u0, m, k = self._plan
            eps, xs = self.eps[module][u0 : u0 + m], x.float().reshape(m, -1, x.shape[-1])  # (m, out, in), (m, k·t, in)
        else:  # rows in no simple order: a copy of ε per row
            eps, xs = self.eps[module].index_select(0, self._idx.to(x.device)), x.float()
        delta = self.sigma * torch.bmm(xs, eps.transpose(1, 2)).reshape(*x.shape[:-1], -1)  # (n, t, out)
        return output + delta.to(output.dtype)

    def attach(self) -> None:
        self._handles = [side.register_forward_hook(self._hook) for side in self.eps]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.eps.clear()


def _source(base, name: str) -> torch.Tensor:
    """Base tensor `name` of the plain model, looked up through peft's LoRA wrappers (`base_layer`)."""
    module_name, _, leaf = name.rpartition(".")
    module = base.get_submodule(module_name)
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    return getattr(module, leaf)


def _adapters(module, where: str) -> list[tuple[str, torch.Tensor, str, torch.Tensor, float]]:
    """(name A, A, name B, B, scale) of a peft LoRA layer's active plain-LoRA adapters."""
    if module.merged or getattr(module, "fan_in_fan_out", False) or len(module.lora_embedding_A):
        raise ValueError(f"{where}: a merged, fan_in_fan_out or embedding LoRA layer; use rollout.engine=lean")
    out = []
    for a in ([] if module.disable_adapters else module.active_adapters):
        if a not in module.lora_A:
            continue
        if a in getattr(module, "lora_variant", {}) or module.lora_bias.get(a, False):
            raise ValueError(f"{where}: adapter {a!r} is not plain LoRA (DoRA, lora_bias); use rollout.engine=lean")
        out.append((f"{where}.lora_A.{a}.weight", module.lora_A[a].weight, f"{where}.lora_B.{a}.weight",
                    module.lora_B[a].weight, float(module.scaling[a])))
    return out


def plain_copy(model) -> tuple[torch.nn.Module, list[tuple[SideLinear, list]]]:
    """A non-peft model of the base's class holding the learner's values in the learner's dtypes: every
    4-bit or adapted projection a `SideLinear` (its weight dequantized once, in the compute dtype), every
    other tensor as the base holds it. Returns (copy, [(side layer, its peft adapters)])."""
    from peft.tuners.lora import LoraLayer

    base = base_of(model)
    device = next(base.parameters()).device
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.use_cache = True
    with torch.device("meta"):
        plain = type(base)(config)
    plain = plain.to_empty(device=device)
    plain.generation_config = copy.deepcopy(base.generation_config)  # its end ids (`rollout.end_ids`)
    rel = {id(m): n for n, m in base.named_modules()}
    sides = []
    with torch.no_grad():
        for name, module in model.named_modules():  # peft names: the noise is keyed on them
            if isinstance(module, LoraLayer):
                layer, adapters = module.get_base_layer(), _adapters(module, name)
            elif hasattr(getattr(module, "weight", None), "quant_state") and not name.endswith(".base_layer"):
                layer, adapters = module, []  # a 4-bit projection without an adapter
            else:
                continue
            if not isinstance(layer, torch.nn.Linear):
                raise ValueError(f"{name}: cannot copy LoRA on a {type(layer).__name__}; use rollout.engine=lean")
            side = SideLinear(layer.weight, layer.bias, [(a, b, s) for _, a, _, b, s in adapters],
                              f"{name}.base_layer.weight" if isinstance(module, LoraLayer) else f"{name}.weight")
            side.load([(a, b) for _, a, _, b, _ in adapters])
            parent, _, leaf = rel[id(module)].rpartition(".")
            plain.get_submodule(parent).add_module(leaf, side)
            sides.append((side, adapters))
        for kind in ("_parameters", "_buffers"):  # the rest (embeddings, norms, head, rotary) as the base holds it
            for name, _ in (plain.named_parameters() if kind == "_parameters" else plain.named_buffers()):
                module_name, _, leaf = name.rpartition(".")
                owner = plain.get_submodule(module_name)
                if not isinstance(owner, SideLinear):
                    value = _source(base, name).detach().clone()
                    getattr(owner, kind)[leaf] = torch.nn.Parameter(value, False) if kind == "_parameters" else value
    plain.tie_weights()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = plain.get_output_embeddings().weight is plain.get_input_embeddings().weight
    if getattr(text, "tie_word_embeddings", False) and not tied:
        raise RuntimeError("the plain copy lost its tied embeddings; use rollout.engine=lean")
    if not any(adapters for _, adapters in sides):
        raise ValueError("the model has no LoRA layers to copy")
    return plain.eval().requires_grad_(False), sides


@torch.no_grad()
def load_adapters(sides: list[tuple[SideLinear, list]], sigma: float, seed: int, noisy: set[str]) -> None:
    """Write the live adapter into the copy's side paths: A + σ·ε_A, B + σ·ε_B where the name is in `noisy`
    (`noise.perturb`, the one function every noise path uses), else A and B as they are."""
    for side, adapters in sides:
        side.load([(noise.perturb(a, name_a, sigma, seed) if name_a in noisy else a,
                    noise.perturb(b, name_b, sigma, seed) if name_b in noisy else b)
                   for name_a, a, name_b, b, _ in adapters])


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
