"""`python cli.py calibrate`: what σ means for this model, in policy terms, before any training.

For each σ of a grid: perturb the LoRA adapter (the run's own noise path, `engine.policy`), sample G
completions for each of P training prompts, and measure against the clean policy on the same prompts
and sampling seed

    kl_noise      KL(π_θ̃ ‖ π_clean) per token (π_clean: the same sampler without noise), by the k3
                  estimator exp(r) − 1 − r, r = log π_clean − log π_θ̃, on the sampled tokens (≥ 0 and
                  of low variance, where the plain mean of −r swings around 0 at small σ); 0 at σ = 0
    kl_numerics   mean of log π_clean − log π_θ (the learner): the part that is there at σ = 0
                  (sampler vs learner precision, KV cache vs full pass); sampler_gap its mean absolute value
                  (both at the rollout temperature, before top-p, as the noise KL)
    accuracy      verifier accuracy of the perturbed samples (the σ = 0 row is the clean policy's)
    diversity     mean group diversity D, as the adaptive controller measures it
    delta_w_rel   ‖ΔW_noise‖ / ‖W_base‖ over the noised layers (`noise.perturbation_size`)

averaged over `draws` noise draws, then suggests the σ whose kl_noise reaches `target_kl` (0.003, the
paper's variant-I target) by log-log interpolation between the grid points around it. Two more grids put
the other arms at the same noise KL per token: `weight_sigmas`, σ·ε on the target projections' dense base
weights in the sampler's copy (noise.space=weight, `psn-weight`), and `temperatures`, action-space noise:
the clean policy sampled at T, with KL(π_T ‖ π_1) per token on its tokens (the `temperature` arm). calibrate.json
records the settings it measured with; `reuse` hands a stored report back only when they are the
ones asked for now (the examples reuse it when rerun). A freshly
initialised adapter has B = 0, so the noise acts through σ·ε_B·A (and σ²·ε_B·ε_A) and the σ needed
depends on the LoRA rank, scale and model: that is why it is measured, not guessed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch

from minipsn.evaluation.provenance import ABSENT, provenance, refuse_stale, settings_differences
from minipsn.method import algo
from minipsn.method.noise import derive_seed, perturbation_size
from minipsn.rewards import correctness_reward
from minipsn.run.config import Config
from minipsn.run.folders import check_writable
from minipsn.sampling.engine import build_engine, make_engine
from minipsn.sampling.rollout import sample
from minipsn.tasks.data import format_prompt
from minipsn.tasks.models import load_policy
from minipsn.tasks.problems import load_problems
from minipsn.training.batch import step_records
from minipsn.training.learner import completion_forward, micro_batches

DEFAULT_SIGMAS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# the config keys a calibration depends on (the run's length, learning rate or σ controller do not matter)
MEASURED_WITH = ("model.", "lora.", "data.", "rollout.", "reward.", "noise.targets", "grpo.prompts_per_step",
                 "grpo.group_size", "grpo.temperature", "grpo.micro_batch_tokens", "control.diversity", "run.seed")


def parse_sigmas(text: str) -> list[float]:
    """'0,0.01,0.1' → [0.0, 0.01, 0.1]: at least one σ > 0, none negative, sorted, σ = 0 added."""
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()} | {0.0})
    except ValueError:
        raise ValueError(f"--sigmas expects comma-separated numbers, got {text!r}") from None
    if values[0] < 0 or len(values) < 2:
        raise ValueError(f"--sigmas needs at least one σ > 0 and none below 0, got {text!r}")
    return values


def parse_temperatures(text: str) -> list[float]:
    """'1.1,1.3' → [1.1, 1.3]: sorted, each > 1 (hotter than the policy: action-space noise)."""
    try:
        values = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--temperatures expects comma-separated numbers, got {text!r}") from None
    if not values or values[0] <= 1.0:
        raise ValueError(f"--temperatures needs values above 1 (hotter than the T = 1 policy), got {text!r}")
    return values


def suggest(rows: list[dict], target: float) -> tuple[float | None, str]:
    """The σ whose kl_noise reaches `target`, interpolated in log-log between the grid points that
    bracket it; None with the reason when the grid does not reach it."""
    pts = [(r["sigma"], r["kl_noise"]) for r in rows if r["sigma"] > 0]
    for (s0, k0), (s1, k1) in zip(pts, pts[1:]):
        if k0 <= target <= k1 and k1 > k0:
            if k0 <= 0:  # σ² growth from 0 below the first point that shows any KL
                return s1 * math.sqrt(target / k1), f"between σ = {s0:g} and {s1:g} (kl ∝ σ² below {s1:g})"
            t = (math.log(target) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))), f"between σ = {s0:g} and {s1:g}"
    if pts and pts[-1][1] < target:
        return None, f"the largest σ ({pts[-1][0]:g}) gives kl_noise {pts[-1][1]:.2g} < {target:g}: add larger --sigmas"
    if pts and pts[0][1] > target:
        return None, f"the smallest σ ({pts[0][0]:g}) gives kl_noise {pts[0][1]:.2g} > {target:g}: add smaller --sigmas"
    return None, "kl_noise does not grow over the grid (too few prompts, or noise on layers that do not matter)"


def _learner_pass(model, ro, cfg: Config, temperature: float, other: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) log π_θ of the sampled tokens at `other`, and (N, H) pooled states, from no-grad learner passes."""
    learner, pooled = [], []
    with torch.no_grad():
        for rows in micro_batches(ro, cfg.grpo.micro_batch_tokens):
            _, _, pool, at_other = completion_forward(model, ro, rows, temperature, other)
            learner.append(at_other)
            pooled.append(pool)
    return torch.cat(learner), torch.cat(pooled)


def _measure(model, engine, tok, prompts, recs, cfg: Config, sigma: float, seed: int, sample_seed: int) -> dict:
    """One σ, one noise draw: sample, rescore clean and noisy (the exact KL), learner pass, verify."""
    G = cfg.grpo.group_size
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(sample_seed)
    with engine.policy(sigma, [seed], cfg.noise.targets) as (sampler, row_noise):
        ro = sample(sampler, tok, prompts, G, cfg.rollout, gen, cfg.model.max_prompt_tokens, row_noise=row_noise)
    mask = ro.completion_mask.bool()
    if sigma > 0:  # the clean sampler's log-probs and the noise's exact KL per position, as the trainer measures them
        clean, _, kl = engine.measure(ro, cfg.rollout, cfg.noise.targets, cfg.grpo.micro_batch_tokens, sigma, [seed] * mask.shape[0])
    else:
        clean, kl = ro.raw_logp, torch.zeros_like(ro.raw_logp)
    # log π_θ at the rollout temperature, as the sampler's raw log-probs
    learner, pooled = _learner_pass(model, ro, cfg, cfg.grpo.temperature, cfg.rollout.temperature)
    if cfg.control.diversity == "hidden":
        div = algo.group_diversity(pooled, G)
    else:
        div = algo.ngram_diversity([r[m].tolist() for r, m in zip(ro.completion_ids, mask)], G)
    correct = _correct(ro, recs, cfg)
    return {"kl_noise": algo.masked_mean(kl, mask).item(),
            "kl_numerics": algo.masked_mean(clean - learner, mask).item(),
            "sampler_gap": algo.masked_mean((clean - learner).abs(), mask).item(),
            "accuracy": sum(correct) / len(correct), "diversity": float(div.mean()),
            "delta_w_rel": (engine.weight_noise_size(sigma, seed, cfg.noise.targets) if getattr(engine, "space", "") == "weight"
                            else perturbation_size(model, sigma, seed, cfg.noise.targets)),
            "len_mean": float(ro.completion_mask.sum(1).float().mean())}


def _correct(ro, recs: list[dict], cfg: Config) -> list[float]:
    G = cfg.grpo.group_size
    return [correctness_reward(t, r["answer"], cut, 0.0, cfg.reward.timeout, cfg.reward.last_number,
                               cfg.reward.unboxed_answer, cfg.reward.verifier, cfg.reward.extract)
            for t, r, cut in zip(ro.texts, [r for r in recs for _ in range(G)], ro.truncated.tolist())]


def _temperature(model, engine, tok, prompts, recs, cfg: Config, temperature: float, sample_seed: int) -> dict:
    """Action-space noise of one temperature T: sample the clean policy at T, and measure KL(π_T ‖ π_1) per token
    on those tokens (k3, as kl_noise: r = log π_1 − log π_T; π_1 the learner at temperature 1)."""
    rcfg = dataclasses.replace(cfg.rollout, temperature=temperature)
    gen = torch.Generator(next(model.parameters()).device).manual_seed(sample_seed)
    with engine.policy(0.0, [0], cfg.noise.targets) as (sampler, _):
        ro = sample(sampler, tok, prompts, cfg.grpo.group_size, rcfg, gen, cfg.model.max_prompt_tokens)
    at_one, pooled = _learner_pass(model, ro, cfg, temperature, 1.0)
    mask = ro.completion_mask.bool()
    correct = _correct(ro, recs, cfg)
    return {"temperature": temperature, "kl": algo.masked_mean(algo.kl_k3(ro.raw_logp, at_one), mask).item(),
            "accuracy": sum(correct) / len(correct),
            "diversity": float(algo.group_diversity(pooled, cfg.grpo.group_size).mean())}


def _grid(model, engine, tok, prompts, recs, cfg: Config, sigmas: list[float], draws: int) -> list[dict]:
    rows = []
    for sigma in sigmas:
        runs = [_measure(model, engine, tok, prompts, recs, cfg, sigma, derive_seed(cfg.run.seed, "calibrate", d),
                         derive_seed(cfg.run.seed, "calibrate-sample", d)) for d in range(draws if sigma > 0 else 1)]
        rows.append({"sigma": sigma, **{k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}})
    for r in rows:
        r["accuracy_clean"] = rows[0]["accuracy"]
    return rows


def calibrate(cfg: Config, sigmas: list[float], target_kl: float = 0.003, draws: int = 2,
              out: str | Path | None = None, adapter: str | None = None, weight_sigmas: list[float] | None = None,
              temperatures: list[float] | None = None) -> dict:
    """Measure every σ in `sigmas` (see the module docstring); write OUT/calibrate.json; return the report."""
    if draws < 1 or target_kl <= 0:
        raise ValueError(f"calibrate needs --draws >= 1 and --target-kl > 0, got {draws} and {target_kl}")
    if out is not None:
        check_writable(out)  # before the grid, not after it
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    t0 = time.perf_counter()
    P = cfg.grpo.prompts_per_step
    records = load_problems(cfg.data, "train")
    torch.manual_seed(cfg.run.seed)  # as the trainer does: the fresh adapter's A is the one run.seed starts with
    model, tok = load_policy(cfg, adapter)
    model.eval()
    engine = make_engine(model, cfg)
    recs = step_records(records, 0, P, cfg.run.seed)  # the prompts of the run's first step
    prompts = [format_prompt(tok, r["problem"], cfg.data.template) for r in recs]
    rows = _grid(model, engine, tok, prompts, recs, cfg, sigmas, draws)
    best, why = suggest(rows, target_kl)
    extra = {}
    if weight_sigmas and cfg.noise.space != "weight":  # the other space, with a copy of its own if need be
        weight = build_engine(model, "fast", cfg.rollout.max_new_tokens, "weight", static_cache=False, compile_step=False)
        w_rows = _grid(model, weight, tok, prompts, recs, cfg, weight_sigmas, draws)
        extra["weight"] = {"rows": w_rows, **dict(zip(("suggested_sigma", "suggestion"), suggest(w_rows, target_kl)))}
        del weight
    if temperatures:
        t_rows = [_temperature(model, engine, tok, prompts, recs, cfg, t, derive_seed(cfg.run.seed, "calibrate-t"))
                  for t in temperatures]
        found, t_why = suggest([{"sigma": r["temperature"] - 1.0, "kl_noise": r["kl"]} for r in t_rows], target_kl)
        extra["temperature"] = {"rows": t_rows, "suggested_temperature": None if found is None else 1.0 + found,
                                "suggestion": t_why.replace("σ = ", "T − 1 = ")}
    report = {"model": cfg.model.name, "adapter": adapter, "targets": cfg.noise.targets, "lora_rank": cfg.lora.rank,
              "lora_alpha": cfg.lora.alpha, "prompts": P, "group_size": cfg.grpo.group_size, "draws": draws,
              "engine": engine.name, "target_kl": target_kl, "suggested_sigma": best, "suggestion": why,
              "space": cfg.noise.space, "rows": rows, **extra, "seconds": time.perf_counter() - t0,
              "settings": settings(cfg, sigmas, target_kl, draws, adapter, weight_sigmas, temperatures),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                         f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "calibrate.json").write_text(json.dumps(report, indent=2))
    return report


def settings(cfg: Config, sigmas: list[float], target_kl: float, draws: int, adapter: str | None,
             weight_sigmas: list[float] | None = None, temperatures: list[float] | None = None) -> dict:
    """What a calibration's numbers depend on (stored in calibrate.json), with the code, build, device and dtype."""
    return {"config": cfg.to_dict(), "sigmas": list(sigmas), "target_kl": target_kl, "draws": draws,
            "adapter": adapter, "weight_sigmas": list(weight_sigmas or []), "temperatures": list(temperatures or []),
            "provenance": provenance(cfg)}


def reuse(path: str | Path, cfg: Config, sigmas: list[float], target_kl: float = 0.003, draws: int = 2,
          adapter: str | None = None, weight_sigmas: list[float] | None = None,
          temperatures: list[float] | None = None, other_code: bool = False) -> dict | None:
    """The report in `path` when it was measured with these settings; None when there is none; an error
    naming the settings that differ otherwise (a stale σ is never picked up silently). `other_code`: a report
    of other code (provenance `source`) is reused, as compare's --other-code reuses a grid's jobs, with the settings
    that code did not have (keys it lacks)."""
    path = Path(path)
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    stored, now = report.get("settings"), settings(cfg, sigmas, target_kl, draws, adapter, weight_sigmas, temperatures)
    if stored is None:
        raise ValueError(f"{path} does not record the settings it was measured with; delete it to measure again")
    diff = {k: (stored.get(k, ABSENT), v) for k, v in now.items()
            if k not in ("config", "provenance") and stored.get(k, ABSENT) != v}
    diff.update(settings_differences(stored["config"], cfg.to_dict(), lambda k: k.startswith(MEASURED_WITH)))
    refuse_stale(path, diff, stored.get("provenance"), now["provenance"], other_code, verb="measured")
    return report


def table(report: dict) -> list:
    """The report as rich tables: the σ grid of each noise space measured, and the temperatures."""
    from rich.table import Table

    tables = []
    spaces = [(report.get("space", "lora"), report["rows"])] + ([("weight", report["weight"]["rows"])] if "weight" in report else [])
    for space, rows in spaces:
        where = f"{report['targets']} LoRA (R = {report['lora_rank']})" if space == "lora" else f"{report['targets']} base weights"
        t = Table(title=f"σ calibration: {report['model']}, noise on {where}, "
                        f"{report['prompts']} prompts × {report['group_size']}, {report['draws']} draws")
        for col in ("σ", "kl_noise / token", "kl_numerics", "accuracy (clean)", "diversity D", "‖ΔW‖/‖W‖"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(f"{r['sigma']:g}", f"{r['kl_noise']:.2e}", f"{r['kl_numerics']:.1e}",
                      f"{r['accuracy']:.3f} ({r['accuracy_clean']:.3f})", f"{r['diversity']:.4f}", f"{r['delta_w_rel']:.2e}")
        tables.append(t)
    if "temperature" in report:
        t = Table(title="action-space noise: the clean policy sampled at T, KL(π_T ‖ π_1) per token")
        for col in ("T", "kl / token", "accuracy", "diversity D"):
            t.add_column(col, justify="right")
        clean, sampled_at = report["rows"][0], report.get("settings", {}).get("config", {}).get("rollout", {}).get(
            "temperature", 1.0)
        if clean["sigma"] == 0 and sampled_at == 1.0:  # T = 1 is the clean policy itself: the σ = 0 row's samples
            t.add_row("1 (σ = 0)", "0", f"{clean['accuracy']:.3f}", f"{clean['diversity']:.4f}")
        for r in report["temperature"]["rows"]:
            t.add_row(f"{r['temperature']:g}", f"{r['kl']:.2e}", f"{r['accuracy']:.3f}", f"{r['diversity']:.4f}")
        t.caption = ("T = 1: the policy itself (KL 0), its accuracy and diversity from the σ = 0 row's samples"
                     if sampled_at == 1.0 else f"the σ = 0 row samples at rollout.temperature = {sampled_at:g}, not T = 1")
        tables.append(t)
    return tables
