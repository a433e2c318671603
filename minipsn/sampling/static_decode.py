"""The fast engine's CUDA decode path: a static KV cache and a compiled one-token step, checked before use.

`StaticDecoder` stands in for the model in `rollout.decode`. Each batch shape gets a static cache whose length
is rounded up to CACHE_ROUND tokens (so a new prompt length rarely means a new compile); before a shape is used,
a few greedy steps through the static (compiled) path must give the log-probs of one eager teacher-forced pass
of the same tokens, within 1e-3 (fp32) or 0.1 (bf16); otherwise it decodes eagerly with the dynamic cache from
then on and says so in one line. On the CPU the tests run the static cache without compile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# static cache lengths are rounded up to this, so a new prompt length rarely means a new compile
CACHE_ROUND = 128


class StaticDecoder(torch.nn.Module):
    """Stands in for the model in `rollout.decode`: same calls, but its own static KV cache, and (CUDA)
    a compiled one-token step. A new batch is recognised by the fresh DynamicCache decode passes in
    (left empty here). Before a new shape is used it is checked once: a few greedy steps through the
    static (compiled) path must give the log-probs of an eager teacher-forced pass, else it decodes
    eagerly with the dynamic cache from then on, saying so in one line. The tests run the static cache on
    CPU without compile; the compiled (CUDA graph) step is trusted only once that check has passed."""

    def __init__(self, model: torch.nn.Module, max_new_tokens: int, compile_step: bool,
                 compute_dtype: torch.dtype = torch.float32, check_steps: int = 8):
        super().__init__()
        self.model, self.max_new, self.check_steps = model, max_new_tokens, check_steps
        step = torch.compile(model, mode="reduce-overhead", dynamic=False) if compile_step else model
        self.__dict__["_step_fn"] = step  # not a submodule: its parameters are the model's
        self.compiled, self.fallback = compile_step, None
        self.tol = 1e-3 if compute_dtype == torch.float32 else 0.1
        self._checked, self._served, self._caches = set(), None, {}
        self._cache, self._width, self._cache_len = None, 0, 0

    @property
    def generation_config(self):
        """The model's, so `rollout.end_ids` stops rows where the model would."""
        return self.model.generation_config

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, use_cache=True, logits_to_keep=0):
        if self.fallback is None and past_key_values is not self._served:
            self._served = past_key_values
            self._start(input_ids.shape, attention_mask, position_ids, input_ids)
        if self.fallback is not None:  # eager, with decode's own dynamic cache
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, use_cache=True, logits_to_keep=logits_to_keep)
        if input_ids.shape[1] > 1 or self._cache_len == 0:
            return self._call(self.model, input_ids, attention_mask, position_ids, logits_to_keep)
        return self._call(self._step_fn, input_ids, attention_mask, position_ids, 0)

    def _start(self, shape, mask, pos, ids) -> None:
        """A new batch: pick (and on first use check) its static cache; the prefill follows."""
        from transformers import StaticCache

        B, Tp = shape
        self._width = -(-(Tp + self.max_new) // CACHE_ROUND) * CACHE_ROUND
        key = (B, self._width)
        if key not in self._caches:  # two shapes kept (training and evaluation batches), about 1 GB each at 1.5B
            self._cache = None
            while len(self._caches) >= 2:
                self._caches.pop(next(iter(self._caches)))
            self._caches[key] = StaticCache(config=self.model.config, max_cache_len=self._width)
        self._cache, self._cache_len = self._caches[key], 0
        if key not in self._checked:
            self._checked.add(key)
            self._check(ids, mask, pos)
        self._cache.reset()
        self._cache_len = 0

    def _call(self, fn, ids, mask, pos, logits_to_keep):
        if mask.shape[1] > self._width:
            raise RuntimeError(f"static cache of {self._width} tokens is full; the engine was built for "
                               f"max_new_tokens={self.max_new}")
        if fn is self._step_fn and self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        out = fn(input_ids=ids, attention_mask=F.pad(mask, (0, self._width - mask.shape[1])), position_ids=pos,
                 past_key_values=self._cache, use_cache=True, logits_to_keep=logits_to_keep)
        self._cache_len = mask.shape[1]
        return out

    @torch.no_grad()
    def _check(self, ids, mask, pos) -> None:
        """Greedy steps through the static path vs one eager teacher-forced forward of the same tokens."""
        k = max(1, min(self.check_steps, self.max_new))
        try:
            logits = self._call(self.model, ids, mask, pos, 1).logits[:, -1].float()
            tokens, logps, m, p = [], [], mask, pos[:, -1:]
            for i in range(k):
                tok = logits.argmax(-1, keepdim=True)  # (B, 1)
                tokens.append(tok), logps.append(logits.log_softmax(-1).gather(-1, tok))
                if i == k - 1:
                    break
                m, p = torch.cat([m, torch.ones_like(m[:, :1])], 1), p + 1
                logits = self._call(self._step_fn, tok, m, p, 0).logits[:, -1].float()
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError, NotImplementedError) as e:
            return self._fall_back(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        full = torch.cat([ids, *tokens[:-1]], 1)
        fmask = torch.cat([mask, torch.ones_like(full[:, ids.shape[1]:])], 1)
        fpos = (fmask.long().cumsum(-1) - 1).clamp(min=0)
        ref = self.model(input_ids=full, attention_mask=fmask, position_ids=fpos, logits_to_keep=k).logits.float()
        ref_lp = ref.log_softmax(-1).gather(-1, torch.cat(tokens, 1)[..., None]).squeeze(-1)  # (B, k)
        err = float((torch.cat(logps, 1) - ref_lp).abs().max())
        if not err <= self.tol:
            self._fall_back(f"its log-probs differ from an eager pass by {err:.2e} > {self.tol:.0e}")

    def _fall_back(self, why: str) -> None:
        self.fallback = why
        print(f"note: static-cache{' compiled' if self.compiled else ''} decoding is off ({why}); "
              "the fast engine decodes eagerly with a dynamic cache")
