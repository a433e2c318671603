"""Rollout engines: the dense copy is the perturbed peft policy op for op (fp32, NF4 with fp32 or bf16
compute), keeps its base weights and the adapter untouched, samples with the log-probs a teacher-forced pass of
π_θ̃ gives, and `auto` picks as documented."""
import os

import pytest
import torch

from minipsn.method.noise import perturbed
from minipsn.run.config import RolloutConfig
from minipsn.run.overrides import build_config
from minipsn.sampling import engine as eng
from minipsn.sampling.engine import CopyEngine, StaticDecoder, UnmergedEngine, choose_engine, make_engine
from minipsn.sampling.rollout import sample

SIGMA, SEED = 0.1, 1234
GiB = 2**30


def ids_for(n=3, t=7):
    return torch.randint(2, 64, (n, t), generator=torch.Generator().manual_seed(5))


def load_nf4(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from minipsn.run.config import LoraConfig
    from minipsn.tasks.models import attach_lora

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype,
                                                device_map={"": "cpu"})
    assert base.is_loaded_in_4bit
    torch.manual_seed(1)
    model = attach_lora(base, LoraConfig(rank=4, alpha=8.0, targets="all"), gradient_checkpointing=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def nf4_folder(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("nf4")
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 tie_word_embeddings=True)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nf4_policy(nf4_folder):
    """A 2-layer Qwen2 reloaded in 4-bit NF4 on the CPU, LoRA (B randomised) on all projections, kept off
    bitsandbytes' bf16 CPU repacking so the peft forward is fp32 too (the engine does the same)."""
    model = load_nf4(nf4_folder)
    eng.keep_cpu_4bit_unpacked(model)
    return model


def test_a_repacked_4bit_base_is_refused_loudly(nf4_folder):
    import bitsandbytes.functional as bnbf

    if not bnbf.has_avx512bf16():
        pytest.skip("bitsandbytes repacks 4-bit weights on CPUs with AVX512-BF16 only")
    model = load_nf4(nf4_folder)
    with torch.no_grad():
        model(input_ids=ids_for())  # an eval forward without grad repacks every 4-bit weight
    with pytest.raises(ValueError, match="repacked"):
        CopyEngine(model, max_new_tokens=4)


def peft_logits(model, ids, targets):
    with torch.no_grad(), perturbed(model, SIGMA, SEED, targets):
        return model(input_ids=ids).logits


@pytest.mark.parametrize("targets", ["mlp", "all"])
def test_copy_equals_perturbed_peft_model(small_policy, targets):
    model = small_policy.eval()
    engine = CopyEngine(model, max_new_tokens=4)
    ids = ids_for()
    want = peft_logits(model, ids, targets)
    with engine.policy(SIGMA, [SEED] * 3, targets) as (sampler, row_noise):
        assert row_noise is None and sampler is engine.plain
        got = sampler(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)  # fp32: folded, W + s·BA rounds at 2⁻²⁴ of W
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    assert (want - clean).abs().max() > 1e-3  # the noise is visible, so the match means something
    with engine.policy(0.0, [SEED], targets) as (sampler, _):
        torch.testing.assert_close(sampler(input_ids=ids).logits, clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_equals_perturbed_peft_model_on_nf4(nf4_folder, dtype):
    """NF4 with fp32 compute (the CPU default) and with bf16 compute (the GPU's numerics, on the CPU)."""
    model = load_nf4(nf4_folder, dtype)
    eng.keep_cpu_4bit_unpacked(model)
    engine = CopyEngine(model, max_new_tokens=4)
    assert engine.dtype == dtype
    ids = ids_for()
    want = peft_logits(model, ids, "mlp")
    with engine.policy(SIGMA, [SEED], "mlp") as (sampler, _), torch.no_grad():
        got = sampler(input_ids=ids).logits
    assert got.dtype == want.dtype == torch.float32  # the head stays fp32, as the learner's (k-bit training)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["fp32", "nf4"])
def test_leaving_the_copy_restores_the_clean_adapter_and_never_touches_the_model(small_policy, nf4_policy, which):
    model = small_policy if which == "fp32" else nf4_policy
    engine = CopyEngine(model, max_new_tokens=4)
    built = {k: v.clone() for k, v in engine.plain.state_dict().items()}  # fp32: the clean adapter folded in
    buffers = {k: v.clone() for k, v in engine.plain.named_buffers()}
    adapter = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    for _ in range(2):
        with engine.policy(SIGMA, [SEED], "all"):
            assert any(not torch.equal(v, buffers[k]) for k, v in engine.plain.named_buffers())
            assert any(not torch.equal(v, built[k]) for k, v in engine.plain.state_dict().items())  # folded noise
        assert all(torch.equal(v, buffers[k]) for k, v in engine.plain.named_buffers())
        assert all(torch.equal(v, built[k]) for k, v in engine.plain.state_dict().items())
    with pytest.raises(KeyError), engine.policy(SIGMA, [SEED], "all"):
        raise KeyError("boom")  # an error while sampling still leaves the copy clean
    assert all(torch.equal(v, buffers[k]) for k, v in engine.plain.named_buffers())
    assert all(torch.equal(v, built[k]) for k, v in engine.plain.state_dict().items())  # back to the clean copy
    assert all(torch.equal(v, adapter[k]) for k, v in model.state_dict().items() if "lora_" in k)


def test_fast_rollout_logp_equals_teacher_forced_perturbed_policy(nf4_policy, toy_tok):
    from minipsn.training.train import completion_logprobs

    engine = CopyEngine(nf4_policy, max_new_tokens=6)
    cfg = RolloutConfig(max_new_tokens=6, batch_size=4)
    with engine.policy(SIGMA, [SEED] * 6, "mlp") as (sampler, row_noise):
        ro = sample(sampler, toy_tok, ["ab", "cdef"], 3, cfg, torch.Generator().manual_seed(0), row_noise=row_noise)
    assert ro.n_tokens > 6
    with torch.no_grad(), perturbed(nf4_policy, SIGMA, SEED, "mlp"):
        logp, _ = completion_logprobs(nf4_policy, ro, torch.arange(6), temperature=1.0)
    m = ro.completion_mask.bool()
    torch.testing.assert_close(ro.sampler_logp[m], logp[m], atol=1e-4, rtol=0)


def test_static_cache_decoding_equals_dynamic_and_falls_back_loudly(small_policy, toy_tok, capsys):
    cfg = RolloutConfig(max_new_tokens=5, batch_size=4)
    runs = {}
    for kind in ("dynamic", "static", "forced-fallback"):
        engine = CopyEngine(small_policy.eval(), max_new_tokens=5, static_cache=kind != "dynamic", compile_step=False)
        if kind == "forced-fallback":
            engine.sampler.tol = -1.0  # every check fails: must decode eagerly, and say so
        with engine.policy(SIGMA, [SEED], "mlp") as (sampler, _):
            runs[kind] = sample(sampler, toy_tok, ["xy", "hello"], 4, cfg, torch.Generator().manual_seed(3))
        if kind != "dynamic":
            assert isinstance(engine.sampler, StaticDecoder)
            assert (engine.sampler.fallback is None) == (kind == "static")
    assert "decodes eagerly" in capsys.readouterr().out
    for kind in ("static", "forced-fallback"):
        assert torch.equal(runs[kind].completion_ids, runs["dynamic"].completion_ids)
        torch.testing.assert_close(runs[kind].sampler_logp, runs["dynamic"].sampler_logp, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="static"):
        CopyEngine(small_policy, max_new_tokens=5, static_cache=False, compile_step=True)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MINIPSN_SLOW"), reason="compiles for ~30 s: MINIPSN_SLOW=1 (make test-slow)")
def test_compiled_static_decoding_runs_and_matches_eager_on_cpu(small_policy, toy_tok, capsys):
    """The CUDA engine's compiled step, here compiled by inductor for the CPU (no CUDA graphs): its
    self-check passes and it samples exactly what eager decoding samples."""
    cfg = RolloutConfig(max_new_tokens=6, batch_size=8)
    runs = {}
    for compiled in (False, True):
        engine = CopyEngine(small_policy.eval(), max_new_tokens=6, static_cache=True, compile_step=compiled)
        for _ in range(2):  # the second batch reuses the compiled step and its cache
            with engine.policy(SIGMA, [SEED], "mlp") as (sampler, _):
                runs[compiled] = sample(sampler, toy_tok, ["xy", "hello"], 4, cfg, torch.Generator().manual_seed(3))
        assert engine.sampler.fallback is None and engine.sampler.compiled == compiled
    assert "decodes eagerly" not in capsys.readouterr().out
    assert torch.equal(runs[True].completion_ids, runs[False].completion_ids)
    torch.testing.assert_close(runs[True].sampler_logp, runs[False].sampler_logp, atol=1e-5, rtol=0)


def test_static_cache_serves_several_batch_shapes_and_refuses_to_overflow(small_policy, toy_tok):
    from minipsn.bench import NoEos

    static = CopyEngine(small_policy.eval(), max_new_tokens=5, static_cache=True, compile_step=False)
    dynamic = CopyEngine(small_policy.eval(), max_new_tokens=5)
    for prompts, G in ((["xy", "hello"], 2), (["a", "bcd", "efgh"], 3), (["xy", "hello"], 2)):
        cfg = RolloutConfig(max_new_tokens=5, batch_size=len(prompts) * G)
        runs = []
        for engine in (static, dynamic):
            with engine.policy(SIGMA, [SEED], "mlp") as (sampler, _):
                runs.append(sample(sampler, toy_tok, prompts, G, cfg, torch.Generator().manual_seed(7)))
        assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
        torch.testing.assert_close(runs[0].sampler_logp, runs[1].sampler_logp, atol=1e-5, rtol=0)
    assert static.sampler.fallback is None and len(static.sampler._caches) == 2
    too_long = RolloutConfig(max_new_tokens=200, batch_size=4)  # the engine was sized for 5 (a 128-token cache)
    with pytest.raises(RuntimeError, match="full"), static.policy(SIGMA, [SEED], "mlp") as (sampler, _):
        sample(sampler, NoEos(toy_tok), ["xy", "hello"], 2, too_long, torch.Generator().manual_seed(0))


def test_fast_engine_refuses_per_row_noise(small_policy):
    engine = CopyEngine(small_policy, max_new_tokens=4)
    with pytest.raises(ValueError, match="unmerged"), engine.policy(SIGMA, [1, 2], "mlp"):
        pass
    with engine.policy(0.0, [1, 2], "mlp"):
        pass  # σ = 0: nothing differs between rows


@pytest.mark.parametrize("requested, device, per_row, quantized, free, want", [
    ("lean", "cuda", False, True, 80 * GiB, "lean"),
    ("hf", "cpu", False, False, None, "hf"),
    ("fast", "cpu", False, True, None, "fast"),
    ("fast", "cuda", True, True, 80 * GiB, "lean"),  # per-row noise: unmerged path
    ("auto", "cpu", True, False, None, "hf"),
    ("auto", "cpu", False, True, None, "fast"),
    ("auto", "cuda", False, True, 40 * GiB, "fast"),  # 3 GiB copy + 16 GiB headroom fits
    ("auto", "cuda", False, True, 10 * GiB, "lean"),  # ... does not
])
def test_choose_engine(requested, device, per_row, quantized, free, want):
    name, why = choose_engine(requested, device, per_row, quantized, free, 80 * GiB, 3 * GiB)
    assert name == want and why
    with pytest.raises(ValueError):
        choose_engine("vllm", device, per_row, quantized)


def test_make_engine_prints_its_choice(small_policy, capsys):
    cfg = build_config(model="tiny", sets={"rollout.engine": "fast", "noise.sigma": "0.01",
                                           "noise.granularity": "group"})
    assert isinstance(make_engine(small_policy, cfg), UnmergedEngine)
    out = capsys.readouterr().out
    assert out.count("rollout engine: hf") == 1 and "per-row" in out
    auto = build_config(model="tiny", sets={"rollout.engine": "auto"})
    assert isinstance(make_engine(small_policy, auto), CopyEngine)
    assert "rollout engine: fast" in capsys.readouterr().out


def test_unmerged_engine_is_noise_context(small_policy):
    engine = UnmergedEngine(small_policy.eval())
    ids = ids_for()
    with engine.policy(SIGMA, [SEED] * 3, "mlp") as (sampler, row_noise):
        assert sampler is small_policy and row_noise is None
        with torch.no_grad():
            got = sampler(input_ids=ids).logits
    torch.testing.assert_close(got, peft_logits(small_policy, ids, "mlp"), atol=0, rtol=0)
    with engine.policy(SIGMA, [1, 2, 3], "mlp") as (_, row_noise):
        assert row_noise is not None
    assert {"noise_in_s", "noise_out_s"} <= engine.stats.keys()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_compiled_static_decoding_matches_the_perturbed_nf4_policy(nf4_folder, toy_tok):
    """bf16 copy, static cache, torch.compile'd step: the check passes and log-probs match π_θ̃ (bf16 tolerance)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from minipsn.run.config import LoraConfig
    from minipsn.tasks.models import attach_lora
    from minipsn.training.train import completion_logprobs

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(nf4_folder, quantization_config=quant, dtype=torch.bfloat16,
                                                device_map={"": "cuda"})
    model = attach_lora(base, LoraConfig(rank=4, alpha=8.0, targets="all"), gradient_checkpointing=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    engine = CopyEngine(model, max_new_tokens=6)
    assert isinstance(engine.sampler, StaticDecoder) and engine.sampler.compiled and engine.dtype == torch.bfloat16
    cfg = RolloutConfig(max_new_tokens=6, batch_size=8)
    with engine.policy(SIGMA, [SEED] * 8, "mlp") as (sampler, _):
        ro = sample(sampler, toy_tok, ["ab", "cdef"], 4, cfg, torch.Generator("cuda").manual_seed(0))
    assert engine.sampler.fallback is None
    with torch.no_grad(), perturbed(model, SIGMA, SEED, "mlp"):
        logp, _ = completion_logprobs(model, ro, torch.arange(8), temperature=1.0)
    m = ro.completion_mask.bool()
    gap = (ro.sampler_logp[m] - logp[m]).abs()
    # the guard's own threshold on the mean (rollout.gap_warn); the max is looser: not yet measured on a card (the
    # CPU's bf16 static decode, test below, gave a max of 5.2e-4 and a mean of 6.6e-5 over 6 models)
    assert gap.mean() < 5e-4 and gap.max() < 0.05, (gap.mean(), gap.max())


@pytest.mark.parametrize("model_seed", [0, 1, 3])
def test_bf16_static_decoding_matches_the_bf16_nf4_learner_on_cpu(model_seed, tmp_path, toy_tok):
    """The static-cache decode path in bf16 against the NF4 learner with bf16 compute, on the noisy policy: the
    TIS denominators. Measured over 6 random 2-layer models (seeds 0-5): max per-token gap 4.8e-7 to 5.2e-4, mean
    1.3e-7 to 6.6e-5 nats; the bounds are 10x the largest max and the guard's threshold on the mean."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from minipsn.training.train import completion_logprobs

    torch.manual_seed(model_seed)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 tie_word_embeddings=True)).save_pretrained(tmp_path)
    model = load_nf4(tmp_path, torch.bfloat16).eval()
    eng.keep_cpu_4bit_unpacked(model)
    engine = CopyEngine(model, max_new_tokens=6, static_cache=True, compile_step=False)
    assert isinstance(engine.sampler, StaticDecoder) and engine.dtype == torch.bfloat16
    with engine.policy(SIGMA, [SEED] * 8, "mlp") as (sampler, _):
        ro = sample(sampler, toy_tok, ["ab", "cdef"], 4, RolloutConfig(max_new_tokens=6, batch_size=8),
                    torch.Generator().manual_seed(model_seed))
    with torch.no_grad(), perturbed(model, SIGMA, SEED, "mlp"):
        logp, _ = completion_logprobs(model, ro, torch.arange(8), temperature=1.0)
    m = ro.completion_mask.bool()
    gap = (ro.sampler_logp[m] - logp[m]).abs()
    assert gap.max() < 5e-3 and gap.mean() < 5e-4, (gap.max(), gap.mean())


def test_end_ids_read_the_tokenizer_and_the_generation_config(small_policy, toy_tok, monkeypatch):
    from minipsn.bench import NoEos
    from minipsn.sampling.rollout import end_ids

    gen_cfg = eng.base_of(small_policy).generation_config
    assert end_ids(small_policy, toy_tok) == [1]  # none declared
    for declared, want in ((5, [1, 5]), ([1, 7], [1, 7]), ([7, None, 1, 9], [1, 7, 9]), (None, [1])):
        monkeypatch.setattr(gen_cfg, "eos_token_id", declared)
        assert end_ids(small_policy, toy_tok) == want  # through peft to the base
    monkeypatch.setattr(gen_cfg, "eos_token_id", [1, 7])
    static = CopyEngine(small_policy, max_new_tokens=4, static_cache=True, compile_step=False)
    assert end_ids(static.plain, toy_tok) == end_ids(static.sampler, toy_tok) == [1, 7]  # the copy keeps them
    assert end_ids(small_policy, NoEos(toy_tok)) == []  # the bench: every row runs max_new_tokens


def _engine(kind, small_policy, nf4_policy):
    if kind == "hf":
        return small_policy, UnmergedEngine(small_policy.eval(), "hf")
    elif kind == "lean":
        return nf4_policy, UnmergedEngine(nf4_policy, "lean")
    elif kind in ("fast", "fast-static"):
        return small_policy, CopyEngine(small_policy.eval(), 8, static_cache=kind == "fast-static", compile_step=False)
    else:
        raise ValueError(kind)


@pytest.mark.parametrize("kind", ["hf", "lean", "fast", "fast-static"])
def test_every_engine_stops_a_row_at_a_second_declared_end_id(small_policy, nf4_policy, toy_tok, kind, monkeypatch):
    """Qwen2.5-Instruct declares two eos ids: a row ending on the second must stop there, not run on."""
    cfg = RolloutConfig(max_new_tokens=8, batch_size=4, temperature=1e-3)  # ≈ greedy: runs repeat exactly
    model, _ = _engine(kind, small_policy, nf4_policy)
    gen_cfg = eng.base_of(model).generation_config
    monkeypatch.setattr(gen_cfg, "eos_token_id", None)

    def run():
        _, engine = _engine(kind, small_policy, nf4_policy)  # built after the config, as in training
        with engine.policy(SIGMA, [SEED] * 4, "mlp") as (sampler, row_noise):
            return sample(sampler, toy_tok, ["xy", "hello"], 2, cfg, torch.Generator().manual_seed(0), row_noise=row_noise)

    ref = run()  # only the tokenizer's eos (1) ends a row
    assert ref.truncated[0] and int(ref.completion_mask[0].sum()) == 8  # row 0 runs on to max_new_tokens
    second = int(ref.completion_ids[0, 2])
    assert second != toy_tok.eos_token_id
    monkeypatch.setattr(gen_cfg, "eos_token_id", [toy_tok.eos_token_id, second])
    got = run()
    for i in range(4):
        row = ref.completion_ids[i][ref.completion_mask[i].bool()].tolist()
        hits = [t for t, x in enumerate(row) if x in (1, second)]
        n = hits[0] + 1 if hits else len(row)
        assert got.completion_ids[i, :n].tolist() == row[:n]
        assert int(got.completion_mask[i].sum()) == n and bool(got.truncated[i]) == (not hits)
        assert got.completion_mask[i, :n].all()  # the end token itself is in the mask, as for the eos
    assert int(got.completion_mask[0].sum()) <= 3 and not got.truncated[0]
