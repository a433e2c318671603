"""The fast engine's dense copy of the base, the weights `rollout.engine=fast` samples from (engine.py's CopyEngine).

`plain_copy` builds a plain (non-peft) model of the base's class holding the learner's values: every 4-bit or adapted
projection a `SideLinear`, its base weight dequantized once into the compute dtype and its adapters beside it in
fp32 (folded into the weight when that is fp32), every other tensor as the base holds it. `load_adapters` writes the
live adapter into it, perturbed by `noise.perturb` where asked; `SideLinear.add_weight_noise` and `WeightRowNoise`
(one draw per row, through forward hooks) put weight-space noise on its dense weights. `copy_bytes` is what the copy
allocates, which `rollout.engine=auto` weighs against the free memory on CUDA. Why bf16 keeps the adapter beside W
rather than folded in: engine.py's docstring.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from minipsn.method import noise
from minipsn.tasks.models import dense_weight


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
    fp32, computed as the learner's peft LoRA layer computes them (see engine.py's docstring). In fp32 the
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
