"""Sampling G completions per prompt, keeping what the learner and the σ controller need.

A hand-written decode loop (prefill, then one token at a time with a KV cache) instead of
`generate`, because the learner needs, for every sampled token, its log-prob under the
distribution it was actually drawn from (log π_θ̃ at the sampling temperature, after top-p),
and the σ controller needs each row's self-certainty from the same logits: no extra pass.

Rows are prompt-major (row i belongs to prompt i // G). Prompts are left-padded so every
completion starts in one column; a row stops at any end id (`end_ids`: the tokenizer's eos and
every eos the model's generation config declares, e.g. Qwen2.5-Instruct's <|im_end|> and
<|endoftext|>) and the loop stops when every row has. A row that hits `max_new_tokens` is `truncated`.

Evaluation (`sample(shared_prefill=True, drop_finished=True)`) encodes each prompt once for its rows and drops
rows that have ended from the batch and the KV cache as it decodes. Every step still draws for every row, so
each token is the one the plain loop (training's) draws from the same generators.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minipsn.method.algo import token_self_certainty
from minipsn.run.config import RolloutConfig
from minipsn.sampling.static_decode import StaticDecoder

# `decode(drop_finished=True)` drops the ended rows once they are this share of the batch: a drop copies the whole
# KV cache, so dropping at every step took 1.8x as long on the tiny model as any share from 1/16 to 1/2
DROP_SHARE = 0.125
# `decode`'s appending cache grows by this many positions at a time (a copy of the cache each time)
ROOM = 16


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
    noisy_logp: torch.Tensor | None = None  # (N, T) `raw_logp` of the noisy sampler, teacher-forced, σ > 0
    noise_kl: torch.Tensor | None = None    # (N, T) KL(π_θ̃ ‖ π_clean) per position, exact over the vocabulary, σ > 0

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


def _pick(logits: torch.Tensor, cfg: RolloutConfig, gen, rows: torch.Tensor | None = None,
          B: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row; return it, its log-prob under the sampling distribution and before top-p.
    `gen` is a generator, or a list of (generator, first row, end row) blocks that each draw their own rows.
    `rows` (L,): which of the B rows of the whole batch the L logits belong to (`decode` drops finished rows).
    Every generator still draws for all its B rows (the others from a dummy distribution, their draws
    discarded): torch.multinomial of one sample per row takes argmax(p / q) with q ~ Exp(1) drawn for every
    entry of its (rows, V) input, so each row gets the token the whole batch would give it, and each
    generator's stream stays the plain loop's."""
    logp, raw = sampling_logp(logits, cfg)  # (L, V) each
    probs = logp.exp()
    part = rows is not None and rows.numel() < B
    if part:
        probs = probs.new_ones(B, probs.shape[1]).index_copy_(0, rows, probs)  # (B, V)
    if isinstance(gen, torch.Generator):
        token = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    else:
        token = torch.cat([torch.multinomial(probs[a:b], 1, generator=g).squeeze(1) for g, a, b in gen])
    token = token[rows] if part else token  # (L,)
    return token, logp.gather(-1, token[:, None]).squeeze(1), raw.gather(-1, token[:, None]).squeeze(1)


def _spread(x: torch.Tensor, rows: torch.Tensor, B: int, fill) -> torch.Tensor:
    """(L,) values of `rows` → (B,), `fill` elsewhere (x itself when every row is there)."""
    return x if rows.numel() == B else x.new_full((B,), fill).index_copy_(0, rows, x)


def _blocks(gens: list[torch.Generator], owner: torch.Tensor) -> list[tuple[torch.Generator, int, int]]:
    """(generator, first, end) for each run of rows of one prompt in `owner` (the rows' prompt ids)."""
    change = [0, *((owner[1:] != owner[:-1]).nonzero().flatten() + 1).tolist(), owner.numel()]
    return [(gens[int(owner[a])], a, b) for a, b in zip(change, change[1:])]


def _teacher_forced(ro: "Rollouts", budget_tokens: int):
    """(rows, forward kwargs) of teacher-forced passes over prompt + completion, at most `budget_tokens` padded
    tokens each; the logits they give, cut to [:, :-1], predict the completion tokens (n, T, V)."""
    Tp, T = ro.prompt_ids.shape[1], ro.completion_ids.shape[1]
    for rows in torch.arange(ro.completion_ids.shape[0]).split(max(1, budget_tokens // (Tp + T))):
        mask = torch.cat([ro.prompt_mask[rows], ro.completion_mask[rows]], dim=1)
        yield rows, {"input_ids": torch.cat([ro.prompt_ids[rows], ro.completion_ids[rows]], dim=1), "attention_mask": mask,
                     "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0), "use_cache": False, "logits_to_keep": T + 1}


def _gather(logp: torch.Tensor, ro: "Rollouts", rows: torch.Tensor) -> torch.Tensor:
    picked = logp.gather(-1, ro.completion_ids[rows].unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~ro.completion_mask[rows].bool(), 0.0)


@torch.no_grad()
def rescore(model, ro: "Rollouts", cfg: RolloutConfig, budget_tokens: int = 16384) -> torch.Tensor:
    """(N, T) log-probs of the sampled tokens under `model`'s log-softmax at the sampling temperature, before
    top-p (as `Rollouts.raw_logp`: finite for every sampled token), by teacher-forced passes of at most
    `budget_tokens` padded tokens; 0 on padding. With the sampler's clean weights this is log π_clean, the
    policy the noise was added to."""
    out = torch.zeros_like(ro.sampler_logp)
    was_training = model.training
    model.eval()
    try:
        for rows, kwargs in _teacher_forced(ro, budget_tokens):
            out[rows] = _gather(sampling_logp(model(**kwargs).logits[:, :-1], cfg)[1], ro, rows).to(out.dtype)
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def rescore_with_noise(model, noisy, ro: "Rollouts", cfg: RolloutConfig,
                       budget_tokens: int = 16384) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, T) each, 0 on padding: log π_clean and log π_θ̃ of the sampled tokens, and KL(π_θ̃ ‖ π_clean) at each
    position over the whole vocabulary, all at the sampling temperature before top-p, from teacher-forced passes of
    `model`, with `noisy(rows)` (a context manager) making it the noisy policy of those rows. The KL is exact, not
    a sampled estimate: under top-p the sampled tokens never reach the tail the noise moves, so an estimate from
    them would be biased low. log π_θ̃ checks the decode path that produced the TIS denominators (`guard/decode_gap`)."""
    clean, noisy_lp, kl = (torch.zeros_like(ro.sampler_logp) for _ in range(3))
    was_training = model.training
    model.eval()
    try:
        for rows, kwargs in _teacher_forced(ro, budget_tokens):
            with noisy(rows):
                lp_n = sampling_logp(model(**kwargs).logits[:, :-1], cfg)[1]  # (n, T, V)
            lp_c = sampling_logp(model(**kwargs).logits[:, :-1], cfg)[1]
            noisy_lp[rows], clean[rows] = _gather(lp_n, ro, rows), _gather(lp_c, ro, rows)
            kl[rows] = (lp_n.exp() * (lp_n - lp_c)).sum(-1).masked_fill(~ro.completion_mask[rows].bool(), 0.0)
            del lp_n, lp_c
    finally:
        model.train(was_training)
    return clean, noisy_lp, kl


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


def _with_room(x: torch.Tensor, n: int, t: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, S, D) cache buffer → a new one holding its first n positions (of `rows`), with room for t + ROOM."""
    head = x[:, :, :n] if rows is None else x[:, :, :n].index_select(0, rows)
    buf = head.new_empty(head.shape[0], head.shape[1], n + t + ROOM, head.shape[3])
    buf[:, :, :n].copy_(head)
    return buf


@functools.cache
def _appending_cache_class():
    """A DynamicCache whose layers append in place: keys and values are views of buffers with room to grow, so
    a step writes its token where DynamicLayer's torch.cat copies the whole cache (at 1,024 rows on the CPU,
    about as long as the attention itself), and dropping rows copies only the filled part. Built on first use:
    this module does not import transformers at import time."""
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class AppendingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.length, self.kbuf, self.vbuf = 0, key_states[:, :, :0], value_states[:, :, :0]
            n, t = self.length, key_states.shape[-2]
            if n + t > self.kbuf.shape[-2]:
                self.kbuf, self.vbuf = _with_room(self.kbuf, n, t), _with_room(self.vbuf, n, t)
            self.kbuf[:, :, n:n + t].copy_(key_states)
            self.vbuf[:, :, n:n + t].copy_(value_states)
            self.length = n + t
            self.keys, self.values = self.kbuf[:, :, :n + t], self.vbuf[:, :, :n + t]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.kbuf, self.vbuf = (_with_room(x, self.length, 0, indices) for x in (self.kbuf, self.vbuf))
            self.keys, self.values = self.kbuf[:, :, :self.length], self.vbuf[:, :, :self.length]

    class AppendingCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=AppendingLayer)

    return AppendingCache


@torch.no_grad()
def decode(model, ids: torch.Tensor, mask: torch.Tensor, cfg: RolloutConfig, stop_ids: list[int], pad_id: int,
           gen, max_new_tokens: int | None = None, repeats: torch.Tensor | None = None, drop_finished: bool = False):
    """Sample continuations of (B, Tp) left-padded prompts, a row ending at the first of `stop_ids` it
    samples (kept in its mask). Returns (ids, mask, logp, raw logp, certainty), each (B, T).

    `repeats` (U,): `ids` and `mask` are U distinct prompts and prompt u stands for the next repeats[u] rows
    (B = repeats.sum()): each is encoded once and its KV cache copied to its rows. `drop_finished`: once
    DROP_SHARE of the batch has ended, the ended rows leave it (and the cache) instead of being carried to the
    end. Neither changes a row's tokens: every op of the forward is per row, so its logits do not depend on which
    other rows share the batch (bit for bit on the CPU, tests/test_rollout.py), and every step still draws for
    all B rows (`_pick`), so each generator's stream is the plain loop's."""
    from transformers import DynamicCache

    max_new = max_new_tokens or cfg.max_new_tokens
    stops = torch.tensor(stop_ids, dtype=torch.long, device=ids.device)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    # the plain loop (training) keeps transformers' cache, so its numbers stay bit for bit what they were
    cache = _appending_cache_class()() if repeats is not None or drop_finished else DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    logits, next_pos = out.logits[:, -1], pos[:, -1] + 1
    if repeats is not None:
        src = torch.arange(ids.shape[0], device=ids.device).repeat_interleave(repeats.to(ids.device))  # (B,)
        cache.batch_select_indices(src)
        logits, mask, next_pos = logits[src], mask[src], next_pos[src]
    B = logits.shape[0]
    rows = torch.arange(B, device=ids.device)  # (L,) the rows in the batch and the cache, L <= B
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    tokens, logps, raws, certs, valid = [], [], [], [], []
    for _ in range(max_new):
        token, lp, raw = _pick(logits, cfg, gen, rows, B)
        token = _spread(token, rows, B, pad_id).masked_fill(done, pad_id)
        tokens.append(token), logps.append(_spread(lp, rows, B, 0.0)), raws.append(_spread(raw, rows, B, 0.0))
        certs.append(_spread(token_self_certainty(logits), rows, B, 0.0)), valid.append(~done)
        done = done | torch.isin(token, stops)
        if bool(done.all()):
            break
        if drop_finished and int(done[rows].sum()) >= DROP_SHARE * rows.numel():
            keep = (~done[rows]).nonzero().squeeze(1)  # (L',) positions in the batch
            cache.batch_select_indices(keep)
            rows, mask, next_pos = rows[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[rows, None], attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits, next_pos = out.logits[:, -1], next_pos + 1
    valid_t = torch.stack(valid, 1)
    logp = torch.stack(logps, 1).masked_fill(~valid_t, 0.0)
    raw = logp if cfg.top_p >= 1.0 else torch.stack(raws, 1).masked_fill(~valid_t, 0.0)
    return torch.stack(tokens, 1), valid_t, logp, raw, torch.stack(certs, 1).masked_fill(~valid_t, 0.0)


def _eager(model):
    """The model `decode` can change the batch of: a `StaticDecoder` holds a static cache of one batch size,
    so its eager model decodes instead (the same weights; on CUDA without the compiled step)."""
    return model.model if isinstance(model, StaticDecoder) else model


def _pad_cols(x: torch.Tensor, width: int, value) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]), value=value)


def sample(model, tok, prompts: list[str], G: int, cfg: RolloutConfig, gen: torch.Generator | list[torch.Generator],
           max_prompt_tokens: int = 4096, row_noise=None, shared_prefill: bool = False,
           drop_finished: bool = False) -> Rollouts:
    """G completions for each prompt, prompt-major, in sub-batches of `cfg.batch_size` rows.

    `gen` is one generator for all rows, or one per prompt: then a prompt's completions depend only on
    its own generator (and the sub-batch size), not on the prompts batched with it.
    `row_noise`, when given, is told which rows each sub-batch holds (`row_noise.select(rows)`),
    so per-group or per-rollout noise can apply each row's own perturbed adapter.
    `shared_prefill` (each prompt encoded once for its rows) and `drop_finished` (ended rows leave the batch)
    make the same samples faster (`decode`); the batch then changes size as it decodes, so a `StaticDecoder`
    (fixed batch) hands over to its eager model, and per-row noise is refused."""
    if not isinstance(gen, torch.Generator) and len(gen) != len(prompts):
        raise ValueError(f"sample got {len(gen)} generators for {len(prompts)} prompts; give one, or one per prompt")
    if row_noise is not None and (shared_prefill or drop_finished):
        raise ValueError("per-row noise gives each row its own adapter: rows cannot share a prefill or leave the batch")
    if shared_prefill or drop_finished:
        model = _eager(model)
    device = next(model.parameters()).device
    ids1, mask1 = (x.to(device) for x in encode_prompts(tok, prompts, max_prompt_tokens))  # (P, Tp)
    ids, mask = ids1.repeat_interleave(G, 0), mask1.repeat_interleave(G, 0)  # (N, Tp)
    was_training = model.training
    model.eval()
    parts, stops = [], end_ids(model, tok)
    try:
        for s in range(0, ids.shape[0], cfg.batch_size):
            rows = torch.arange(s, min(s + cfg.batch_size, ids.shape[0]))
            if row_noise is not None:
                row_noise.select(rows)
            g = gen if isinstance(gen, torch.Generator) else _blocks(gen, rows // G)
            if shared_prefill:
                owner, repeats = torch.unique_consecutive(rows // G, return_counts=True)
                parts.append(decode(model, ids1[owner.to(device)], mask1[owner.to(device)], cfg, stops,
                                    tok.pad_token_id, g, repeats=repeats, drop_finished=drop_finished))
            else:
                parts.append(decode(model, ids[rows.to(device)], mask[rows.to(device)], cfg, stops, tok.pad_token_id,
                                    g, drop_finished=drop_finished))
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
