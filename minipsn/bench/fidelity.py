"""Does the sampler sample the policy the learner trains? Three measures, in any `model.dtype`.

    projection   ⟨Δ_s, Δ_l⟩ / ‖Δ_l‖², Δ = what the adapter changes in a layer's output (or in the logits),
                 Δ_l the learner's (fp32 LoRA term on the base) and Δ_s the sampler's: 1 when the sampler
                 applies the whole update; a bf16 fold W + s·BA keeps only what survives rounding into W
    gap          mean |log π_sampler − log π_learner| per sampled token, no noise (the trainer's
                 `guard/sampler_gap`)
    kl_numerics  mean (log π_sampler − log π_learner) per sampled token (`noise/kl_numerics`)

On the model, `route="copy"` measures the fast engine as it is (`dense_copy.SideLinear`: the base in the compute dtype,
the adapter beside it in fp32; folded in an fp32 copy) and `route="fold"` folds s·BA into the copy's weights in
their dtype, the route the engine does not take in bf16, kept so the table shows what it would lose; on one
layer only the fold is measured (the side path is the learner's term itself there) (docs/RESULTS.md, "The sampler samples
the learner's policy"). `python cli.py bench` prints both.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from minipsn.method import algo

B_SCALES = (1e-4, 3e-4, 1e-3, 3e-3)  # std of the LoRA B entries: a small update … a well-trained adapter


def projection(sampler_delta: torch.Tensor, learner_delta: torch.Tensor) -> float:
    """⟨Δ_s, Δ_l⟩ / ‖Δ_l‖² over all entries (fp64)."""
    s, ref = sampler_delta.double().flatten(), learner_delta.double().flatten()
    return float(s @ ref / (ref @ ref))


def rel_error(sampler_delta: torch.Tensor, learner_delta: torch.Tensor) -> float:
    """‖Δ_s − Δ_l‖ / ‖Δ_l‖ (fp64): what of the update the sampler gets wrong, in any direction."""
    return float((sampler_delta.double() - learner_delta.double()).norm() / learner_delta.double().norm())


@torch.no_grad()
def layer_fidelity(width: int = 1536, rank: int = 16, scale: float = 2.0, b_std: float = 1e-3,
                   dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> dict:
    """What a fold W + s·BA in `dtype` keeps of the update, on one Qwen2.5-1.5B-width projection (W ~ N(0, 0.02²)
    on the `dtype` grid, as a dequantized NF4 base is; A as peft initialises it; B ~ N(0, b_std²)): {projection,
    rel_error} of the folded layer's output change against the learner's fp32 LoRA term, for 64 inputs x ~ N(0, 1)
    in fp32 activations (k-bit training's). Only the fold is measured here: the engine's side path computes the
    learner's term itself, so on one layer it would be compared with itself; `model_fidelity` measures it."""
    device = torch.zeros(0).device  # the layer measure runs where tensors are made by default (the CPU)
    g = torch.Generator(device).manual_seed(seed)
    W = (torch.randn(width, width, generator=g) * 0.02).to(dtype)
    A = (torch.rand(rank, width, generator=g) * 2 - 1) / width**0.5
    B = torch.randn(width, rank, generator=g) * b_std
    x = torch.randn(64, width, generator=g)
    base = F.linear(x.to(dtype), W).float()
    learner = scale * F.linear(F.linear(x, A), B)  # the learner's LoRA term, fp32, on top of `base`
    folded = (W.float() + scale * B @ A).to(dtype)
    sampler = F.linear(x.to(dtype), folded).float() - base
    return {"projection": projection(sampler, learner), "rel_error": rel_error(sampler, learner)}


@contextmanager
def folded(engine):
    """Within: s·BA folded into the copy's weights in their own dtype, the side paths off (what an fp32 copy does
    anyway; in bf16 the route the engine does not take)."""
    saved = []
    with torch.no_grad():
        for side, _ in engine.sides:
            saved.append((side.weight.detach().clone(), side.fold))
            w = side.weight.float()
            for i, scale in enumerate([] if side.fold else side.scales):
                w = w + scale * getattr(side, f"B{i}").float() @ getattr(side, f"A{i}").float()
            side.weight.copy_(w.to(side.weight.dtype))
            side.fold = True
    try:
        yield engine.plain
    finally:
        with torch.no_grad():
            for (side, _), (w, fold) in zip(engine.sides, saved):
                side.weight.copy_(w)
                side.fold = fold
        from minipsn.sampling.dense_copy import load_adapters

        load_adapters(engine.sides, 0.0, 0, set())


@torch.no_grad()
def set_lora_b(model, std: float, seed: int = 0) -> None:
    """Every LoRA B entry ~ N(0, std²): an adapter whose update has that size."""
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g, device=device) * std)


@torch.no_grad()
def model_fidelity(model, engine, tok, prompts: list[str], G: int, rcfg, route: str = "copy", seed: int = 0) -> dict:
    """The three measures for one (model, adapter): sample G completions per prompt without noise through the
    engine's copy (`route`), then compare over the sampled tokens: the logits' change from the adapter
    (with it against B = 0) in sampler and learner (projection, rel_error), and the sampler's decoded
    log-probs against the learner's full pass (gap, kl_numerics), both at the rollout temperature."""
    from minipsn.sampling.dense_copy import load_adapters
    from minipsn.sampling.rollout import sample
    from minipsn.training.learner import body_and_head

    with engine.policy(0.0, [0], "all") as (sampler, _), (folded(engine) if route == "fold" else _same(sampler)):
        device = engine.device
        ro = sample(sampler, tok, prompts, G, rcfg, torch.Generator(device).manual_seed(seed))
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    mask = torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    T, cmask = ro.completion_ids.shape[1], ro.completion_mask.bool()

    def sampler_logits():
        load_adapters(engine.sides, 0.0, 0, set())
        with folded(engine) if route == "fold" else _same(engine.plain) as plain:
            return plain(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]

    def learner_logits():  # as learner.completion_forward computes them
        body, head = body_and_head(model)
        hidden = body(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, -T - 1 : -1]
        return (hidden.to(head.dtype) @ head.T).float()

    with_adapter = sampler_logits().float(), learner_logits()
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    set_lora_b(model, 0.0)
    without = sampler_logits().float(), learner_logits()
    for n, p in model.named_parameters():
        if n in saved:
            p.copy_(saved[n])
    load_adapters(engine.sides, 0.0, 0, set())
    m = cmask.unsqueeze(-1)
    delta_s, delta_l = (with_adapter[0] - without[0]) * m, (with_adapter[1] - without[1]) * m
    learner_lp = F.log_softmax(with_adapter[1] / rcfg.temperature, -1).gather(-1, ro.completion_ids.unsqueeze(-1))
    diff = ro.raw_logp - learner_lp.squeeze(-1)  # decoded (KV cache) against the learner's full pass
    return {"projection": projection(delta_s, delta_l), "rel_error": rel_error(delta_s, delta_l),
            "gap": algo.masked_mean(diff.abs(), cmask).item(), "kl_numerics": algo.masked_mean(diff, cmask).item(),
            "tokens": ro.n_tokens}


@contextmanager
def _same(x):
    yield x


def bench_fidelity(device: str = "cpu", model_name: str = "tiny", prompts: int = 4, G: int = 4, T: int = 24) -> dict:
    """`python cli.py bench`'s sampler/learner section: the layer measure (Qwen2.5-1.5B width) and the model
    measures on `model_name` (NF4 base, `model.dtype` bfloat16 and float32), fold against copy, per B scale."""
    from minipsn.run.overrides import build_config
    from minipsn.sampling.engine import CopyEngine
    from minipsn.tasks.data import format_prompt
    from minipsn.tasks.models import load_policy
    from minipsn.tasks.problems import load_problems

    dtypes = ("bfloat16", "float32")
    out = {"layer": {d: {"fold": {str(b): layer_fidelity(b_std=b, dtype=getattr(torch, d)) for b in B_SCALES}}
                     for d in dtypes}, "model": {}, "model_name": model_name}
    for d in dtypes:
        cfg = build_config(model=model_name, sets={"model.dtype": d, "model.device": device, "rollout.max_new_tokens": T})
        torch.manual_seed(0)
        model, tok = load_policy(cfg)
        engine = CopyEngine(model.eval(), T, static_cache=False, compile_step=False)
        texts = [format_prompt(tok, r["problem"], cfg.data.template) for r in load_problems(cfg.data, "train")[:prompts]]
        rows = {}
        for route in ("fold", "copy"):
            rows[route] = {}
            for b in B_SCALES:
                set_lora_b(model, b)
                rows[route][str(b)] = model_fidelity(model, engine, tok, texts, G, cfg.rollout, route)
        out["model"][d] = rows
        del model, engine
    return out


def table(report: dict):
    """A rich table of `bench_fidelity`: one row per (dtype, route), the projection / gap per B scale."""
    from rich.table import Table

    t = Table(title=f"sampler vs learner · layer 1536² and {report['model_name']} · projection (gap, nats/token)",
              caption="projection ≥ 0.99: the sampler applies the learner's whole update; fold: W + s·BA in the "
                      "copy's dtype (not used), copy: the fast engine (measured on the model only: on one layer its "
                      "side path is the learner's own term)")
    t.add_column("dtype · route")
    for b in B_SCALES:
        t.add_column(f"B {b:.0e}: layer", justify="right")
        t.add_column("model (gap)", justify="right")
    for d, routes in report["model"].items():
        for r, by_b in routes.items():
            cells = []
            for b in B_SCALES:
                layer, model = report["layer"][d].get(r, {}).get(str(b)), by_b[str(b)]
                cells += [f"{layer['projection']:.3f}" if layer else "—", f"{model['projection']:.3f} ({model['gap']:.1e})"]
            t.add_row(f"{d} · {r}", *cells)
    return t
