"""Evaluation's decode path, `sample(shared_prefill=True, drop_finished=True)`: each prompt encoded once for its
rows, ended rows dropped from the batch and the KV cache as it decodes. It must sample exactly the tokens the
plain loop samples from the same generators, on every engine; record the log-probs of the distribution it drew
from (a teacher-forced pass); and keep a prompt's samples independent of the prompts sharing its call."""
from contextlib import contextmanager

import pytest
import torch

from minipsn.run.config import RolloutConfig
from minipsn.sampling import rollout
from minipsn.sampling.engine import StaticDecoder
from minipsn.sampling.rollout import sample
from tests.test_engine import _engine, nf4_folder, nf4_policy  # noqa: F401 (fixtures)

FAST = {"shared_prefill": True, "drop_finished": True}
PROMPTS = ["xy", "hello", "abc"]  # three lengths: left padding within a call
SAME_LENGTH = ["ab", "cd", "ef"]  # one length: a prompt alone is padded as in company


def _gens(k):
    return [torch.Generator().manual_seed(100 + i) for i in range(k)]


@contextmanager
def _batch_sizes(model):
    """The batch size of every forward of `model`, in order."""
    sizes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: sizes.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        yield sizes
    finally:
        hook.remove()


def _teacher(model, ro, cfg):
    """(N, T) log-probs of the sampled tokens under the sampling distribution (temperature, top-p) and before top-p,
    from one teacher-forced forward of prompt + completion."""
    ids, mask = torch.cat([ro.prompt_ids, ro.completion_ids], 1), torch.cat([ro.prompt_mask, ro.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    Tp = ro.prompt_ids.shape[1]
    return [x.gather(-1, ro.completion_ids[..., None]).squeeze(-1)
            for x in rollout.sampling_logp(logits[:, Tp - 1:-1], cfg)]


def _assert_same(got, ref, atol=1e-6):
    assert torch.equal(got.completion_ids, ref.completion_ids)
    assert torch.equal(got.completion_mask, ref.completion_mask) and torch.equal(got.truncated, ref.truncated)
    assert got.texts == ref.texts and torch.equal(got.prompt_ids, ref.prompt_ids)
    for a, b in ((got.sampler_logp, ref.sampler_logp), (got.raw_logp, ref.raw_logp), (got.certainty, ref.certainty)):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
@pytest.mark.parametrize("per_prompt", [True, False])
def test_sharing_the_prefill_and_dropping_ended_rows_change_no_token(small_policy, toy_tok, top_p, per_prompt):
    gen = (lambda: _gens(3)) if per_prompt else (lambda: torch.Generator().manual_seed(7))
    # 3 prompts × 8 rows in one call, then in calls of 10 (the second group is split, its generator carries on)
    for batch_size in (24, 10):
        cfg = RolloutConfig(max_new_tokens=40, batch_size=batch_size, top_p=top_p, temperature=0.8)
        ref = sample(small_policy, toy_tok, PROMPTS, 8, cfg, gen())
        assert ref.completion_mask.sum(1).min() < 20 and ref.truncated.any()  # rows end far apart: some to drop
        for opts in ({"shared_prefill": True}, {"drop_finished": True}, FAST):
            with _batch_sizes(small_policy) as sizes:
                got = sample(small_policy, toy_tok, PROMPTS, 8, cfg, gen(), **opts)
            _assert_same(got, ref)
            m = got.completion_mask.bool()
            for logged, teacher in zip((got.sampler_logp, got.raw_logp), _teacher(small_policy, got, cfg)):
                torch.testing.assert_close(logged[m], teacher[m], atol=1e-5, rtol=0)
            if batch_size == 24:  # the prefill encodes each prompt once; ended rows leave the batch
                assert sizes[0] == (3 if opts.get("shared_prefill") else 24)
                assert (min(sizes[1:]) < 24) == bool(opts.get("drop_finished"))
    assert small_policy.training  # sampling left the mode as it was


def test_a_prompts_samples_are_the_same_alone_or_in_company(small_policy, toy_tok):
    cfg = RolloutConfig(max_new_tokens=40, batch_size=24)
    together = sample(small_policy, toy_tok, SAME_LENGTH, 8, cfg, _gens(3), **FAST)
    assert together.completion_mask.sum(1).min() < 20 and together.truncated.any()  # rows were dropped
    for i, prompt in enumerate(SAME_LENGTH):
        alone = sample(small_policy, toy_tok, [prompt], 8, cfg, [_gens(3)[i]], **FAST)
        rows = slice(8 * i, 8 * (i + 1))
        width = int(alone.completion_ids.shape[1])
        assert torch.equal(alone.completion_ids, together.completion_ids[rows, :width])
        assert not together.completion_mask[rows, width:].any()
        assert alone.texts == together.texts[rows]
        torch.testing.assert_close(alone.sampler_logp, together.sampler_logp[rows, :width], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["hf", "lean", "fast", "fast-static"])
def test_every_engine_samples_the_same_and_logs_the_teacher_forced_logp(small_policy, nf4_policy, toy_tok, kind):  # noqa: F811
    """The clean policy, as evaluation samples it; temperature 0.7, so a log-prob at temperature 1 would be caught."""
    cfg = RolloutConfig(max_new_tokens=8, batch_size=12, temperature=0.7)
    _, engine = _engine(kind, small_policy, nf4_policy)
    with engine.policy(0.0, [0], "mlp") as (sampler, _):
        ref = sample(sampler, toy_tok, PROMPTS, 4, cfg, _gens(3))
        got = sample(sampler, toy_tok, PROMPTS, 4, cfg, _gens(3), **FAST)
        if kind == "fast-static":
            assert isinstance(sampler, StaticDecoder) and sampler.fallback is None  # the plain loop used it
    _assert_same(got, ref, atol=1e-5)
    teacher = engine.rescore(got, cfg, "mlp", 4096)  # one forward of prompt + completion at the temperature
    m = got.completion_mask.bool()
    assert m.sum() > 12
    torch.testing.assert_close(got.sampler_logp[m], teacher[m], atol=1e-4, rtol=0)


def test_per_row_noise_is_refused_on_the_fast_path(small_policy, toy_tok):
    cfg = RolloutConfig(max_new_tokens=4, batch_size=4)
    for opts in ({"shared_prefill": True}, {"drop_finished": True}):
        with pytest.raises(ValueError, match="per-row noise"):
            sample(small_policy, toy_tok, PROMPTS, 2, cfg, _gens(3), row_noise=object(), **opts)


def test_the_appending_cache_drops_and_grows_like_a_dynamic_cache():
    """Rows selected and room outgrown: the keys it serves are those of transformers' DynamicCache."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    ours, ref = rollout._appending_cache_class()(), DynamicCache()
    steps = [torch.randn(6, 2, 5, 4)] + [torch.randn(6, 2, 1, 4) for _ in range(rollout.ROOM + 3)]
    keep = torch.tensor([0, 2, 3, 5])
    for i, k in enumerate(steps):
        if i == 3:
            ours.batch_select_indices(keep), ref.batch_select_indices(keep)
        k = k[keep] if i >= 3 else k
        a, b = ours.update(k, -k, 0), ref.update(k, -k, 0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ours.get_seq_length() == ref.get_seq_length() == 5 + rollout.ROOM + 3
