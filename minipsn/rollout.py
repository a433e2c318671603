"""Sampling G completions per prompt, keeping what the learner and the σ controller need.

A hand-written decode loop (prefill, then one token at a time with a KV cache) instead of
`generate`, because the learner needs, for every sampled token, its log-prob under the
distribution it was actually drawn from (log π_θ̃ at the sampling temperature, after top-p),
and the σ controller needs each row's self-certainty from the same logits: no extra pass.

Rows are prompt-major (row i belongs to prompt i // G). Prompts are left-padded so every
completion starts in one column; a row stops at any end id (`end_ids`: the tokenizer's eos and
every eos the model's generation config declares, e.g. Qwen2.5-Instruct's <|im_end|> and
<|endoftext|>) and the loop stops when every row has. A row that hits `max_new_tokens` is `truncated`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minipsn.algo import token_self_certainty
from minipsn.config import RolloutConfig


@dataclass
class Rollouts:
    prompt_ids: torch.Tensor       # (N, Tp) left-padded
    prompt_mask: torch.Tensor      # (N, Tp)
    completion_ids: torch.Tensor   # (N, T) padded after the end token
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the end token
    sampler_logp: torch.Tensor     # (N, T) log π_θ̃ of each sampled token: the distribution it was drawn from
    certainty: torch.Tensor        # (N,) mean self-certainty KL(U ‖ p) over the row's tokens
    truncated: torch.Tensor        # (N,) bool: no end token within max_new_tokens
    texts: list[str]               # N decoded completions
    # (N, T) the sampler's log-softmax at the rollout temperature before top-p, kept only when top_p < 1 (else it
    # is sampler_logp): finite for every sampled token, what the noise KL and the sampler/learner gap compare
    top_p_raw_logp: torch.Tensor | None = None
    clean_logp: torch.Tensor | None = None  # (N, T) `raw_logp` of the sampler without noise (`rescore`), σ > 0

    @property
    def raw_logp(self) -> torch.Tensor:
        """(N, T) log-softmax of the sampler's logits at the rollout temperature, before top-p."""
        return self.sampler_logp if self.top_p_raw_logp is None else self.top_p_raw_logp

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())


def encode_prompts(tok, prompts: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (n, Tp) and mask; a prompt longer than `max_tokens` is an error."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    lengths = enc["attention_mask"].sum(1)
    if int(lengths.max()) > max_tokens:
        i = int(lengths.argmax())
        raise ValueError(f"prompt {i} has {int(lengths[i])} tokens, more than model.max_prompt_tokens={max_tokens}; "
                         "raise it or shorten the prompt")
    return enc["input_ids"], enc["attention_mask"]


def sampling_logp(logits: torch.Tensor, cfg: RolloutConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits → (log-probs of the distribution tokens are drawn from: temperature, then top-p;
    the log-softmax at the temperature before top-p). Logits are upcast to fp32 first: a bf16 softmax would
    put its rounding straight into the TIS weights. The two are one tensor when top_p = 1."""
    raw = F.log_softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p >= 1.0:
        return raw, raw
    sorted_lp, order = raw.sort(dim=-1, descending=True)
    outside = sorted_lp.exp().cumsum(-1) - sorted_lp.exp() >= cfg.top_p  # keeps the top token
    logp = raw.scatter(-1, order, sorted_lp.masked_fill(outside, float("-inf")))
    return logp - logp.logsumexp(-1, keepdim=True), raw


def _pick(logits: torch.Tensor, cfg: RolloutConfig, gen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row; return it, its log-prob under the sampling distribution and before top-p.
    `gen` is a generator, or a list of (generator, first row, end row) blocks that each draw their own rows."""
    logp, raw = sampling_logp(logits, cfg)  # (B, V) each
    probs = logp.exp()
    if isinstance(gen, torch.Generator):
        token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    else:
        token = torch.cat([torch.multinomial(probs[a:b], 1, generator=g).squeeze(1) for g, a, b in gen])
    return token, logp.gather(-1, token[:, None]).squeeze(1), raw.gather(-1, token[:, None]).squeeze(1)


def _blocks(gens: list[torch.Generator], owner: torch.Tensor) -> list[tuple[torch.Generator, int, int]]:
    """(generator, first, end) for each run of rows of one prompt in `owner` (the rows' prompt ids)."""
    change = [0, *((owner[1:] != owner[:-1]).nonzero().flatten() + 1).tolist(), owner.numel()]
    return [(gens[int(owner[a])], a, b) for a, b in zip(change, change[1:])]


@torch.no_grad()
def rescore(model, ro: "Rollouts", cfg: RolloutConfig, budget_tokens: int = 16384) -> torch.Tensor:
    """(N, T) log-probs of the sampled tokens under `model`'s log-softmax at the sampling temperature, before
    top-p (as `Rollouts.raw_logp`: finite for every sampled token), by teacher-forced passes of at most
    `budget_tokens` padded tokens; 0 on padding. With the sampler's clean weights this is log π_clean, the
    policy the noise was added to."""
    Tp, T = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
    out = torch.zeros_like(ro.sampler_logp)
    was_training = model.training
    model.eval()
    try:
        for rows in torch.arange(ro.completion_ids.shape[0]).split(max(1, budget_tokens // (Tp + T))):
            ids = torch.cat([ro.prompt_ids[rows], ro.completion_ids[rows]], dim=1)
            mask = torch.cat([ro.prompt_mask[rows], ro.completion_mask[rows]], dim=1)
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=T + 1).logits
            logp = sampling_logp(logits[:, :-1], cfg)[1].gather(-1, ro.completion_ids[rows].unsqueeze(-1)).squeeze(-1)
            out[rows] = logp.masked_fill(~ro.completion_mask[rows].bool(), 0.0).to(out.dtype)
    finally:
        model.train(was_training)
    return out


def end_ids(model, tok) -> list[int]:
    """Ids that end a row: `tok.eos_token_id`, then each id in the generation config's `eos_token_id` (int or
    list) of `model` (a peft model: its base); None skipped. A tokenizer with a `stop_ids` attribute
    fixes the list itself (`bench.NoEos`: none, so every row runs `max_new_tokens`)."""
    if hasattr(tok, "stop_ids"):
        return list(tok.stop_ids)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    declared = getattr(getattr(base, "generation_config", None), "eos_token_id", None)
    declared = declared if isinstance(declared, (list, tuple)) else [declared]
    ids = [int(i) for i in [tok.eos_token_id, *declared] if i is not None]
    return list(dict.fromkeys(ids))  # unique, tokenizer's first


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, cfg: RolloutConfig, stop_ids: list[int], pad_id: int,
           gen, max_new_tokens: int | None = None):
    """Sample continuations of (B, Tp) left-padded prompts, a row ending at the first of `stop_ids` it
    samples (kept in its mask). Returns (ids, mask, logp, raw logp, certainty), each (B, T)."""
    from transformers import DynamicCache

    max_new = max_new_tokens or cfg.max_new_tokens
    B, stops = ids.shape[0], torch.tensor(stop_ids, dtype=torch.long, device=ids.device)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    next_pos, done = pos[:, -1] + 1, torch.zeros(B, dtype=torch.bool, device=ids.device)
    tokens, logps, raws, certs, valid = [], [], [], [], []
    for _ in range(max_new):
        logits = out.logits[:, -1]
        token, lp, raw = _pick(logits, cfg, gen)
        token = token.masked_fill(done, pad_id)
        tokens.append(token), logps.append(lp), raws.append(raw), certs.append(token_self_certainty(logits))
        valid.append(~done)
        done = done | torch.isin(token, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
    valid_t = torch.stack(valid, 1)
    logp = torch.stack(logps, 1).masked_fill(~valid_t, 0.0)
    raw = logp if cfg.top_p >= 1.0 else torch.stack(raws, 1).masked_fill(~valid_t, 0.0)
    return torch.stack(tokens, 1), valid_t, logp, raw, torch.stack(certs, 1).masked_fill(~valid_t, 0.0)


def _pad_cols(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=value)


def sample(model, tok, prompts: list[str], G: int, cfg: RolloutConfig, gen: torch.Generator | list[torch.Generator],
           max_prompt_tokens: int = 4096, row_noise=None) -> Rollouts:
    """G completions for each prompt, prompt-major, in sub-batches of `cfg.batch_size` rows.

    `gen` is one generator for all rows, or one per prompt: then a prompt's completions depend only on
    its own generator (and the sub-batch size), not on the prompts batched with it.
    `row_noise`, when given, is told which rows each sub-batch holds (`row_noise.select(rows)`),
    so per-group or per-rollout noise can apply each row's own perturbed adapter."""
    if not isinstance(gen, torch.Generator) and len(gen) != len(prompts):
        raise ValueError(f"sample got {len(gen)} generators for {len(prompts)} prompts; give one, or one per prompt")
    device = next(model.parameters()).device
    ids, mask = encode_prompts(tok, prompts, max_prompt_tokens)
    ids, mask = ids.repeat_interleave(G, 0).to(device), mask.repeat_interleave(G, 0).to(device)  # (N, Tp)
    was_training = model.training
    model.eval()
    parts, stops = [], end_ids(model, tok)
    try:
        for s in range(0, ids.shape[0], cfg.batch_size):
            rows = torch.arange(s, min(s + cfg.batch_size, ids.shape[0]))
            if row_noise is not None:
                row_noise.select(rows)
            g = gen if isinstance(gen, torch.Generator) else _blocks(gen, rows // G)
            parts.append(decode(model, ids[rows], mask[rows], cfg, stops, tok.pad_token_id, g))
    finally:
        model.train(was_training)
    width = max(p[0].shape[1] for p in parts)
    comp = torch.cat([_pad_cols(p[0], width, tok.pad_token_id) for p in parts])
    cmask = torch.cat([_pad_cols(p[1], width, False) for p in parts])
    logp = torch.cat([_pad_cols(p[2], width, 0.0) for p in parts])
    raw = None if cfg.top_p >= 1.0 else torch.cat([_pad_cols(p[3], width, 0.0) for p in parts])
    cert = torch.cat([_pad_cols(p[4], width, 0.0) for p in parts])
    ended = (torch.isin(comp, torch.tensor(stops, dtype=torch.long, device=comp.device)) & cmask).any(1)
    texts = tok.batch_decode(comp.masked_fill(~cmask, tok.pad_token_id), skip_special_tokens=True)
    return Rollouts(ids, mask, comp, cmask.long(), logp, cert.sum(1) / cmask.sum(1).clamp(min=1), ~ended, texts, raw)
