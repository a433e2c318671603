"""Per-step / per-group / per-rollout parameter-space noise on a tiny random-init Qwen2 + LoRA.

The per-row path (forward hooks, one batch) must reproduce the step path (`perturbed`, weights
changed in place) seed by seed, and leave no hook and no changed bit behind."""
import pytest
import torch

from minipsn.method.noise import RowNoise, noise_context, perturbed, row_seeds
from minipsn.run.config import RolloutConfig
from minipsn.sampling.rollout import sample

SIGMA = 0.1
TOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def model():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"])
    m = get_peft_model(Qwen2ForCausalLM(cfg), lora).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)  # peft starts B at 0, which would make BA (and half the test) trivial
    return m


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def step_logits(model, ids, seed, targets="mlp"):
    with perturbed(model, SIGMA, seed, targets):
        return logits(model, ids)


def ids_for(n, t=6, seed=1):
    return torch.randint(2, 64, (n, t), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("targets", ["mlp", "attn", "all"])
def test_rollout_rows_match_step_path(model, targets):
    ids = ids_for(4)
    seeds = row_seeds(7, 2, 2, "rollout")
    with noise_context(model, SIGMA, seeds, targets) as rn:
        assert isinstance(rn, RowNoise) and rn.seeds == seeds
        batched = logits(model, ids)  # (N, t, V), one forward, each row its own adapter
        rn.select(torch.tensor([3, 1]))  # rows out of order: the gathered fallback
        picked = logits(model, ids[[3, 1]])
    for r in range(4):
        ref = step_logits(model, ids[r : r + 1], seeds[r], targets)[0]
        assert torch.allclose(batched[r], ref, **TOL), f"row {r}"
    assert torch.allclose(picked, batched[[3, 1]], **TOL)
    clean = logits(model, ids)
    assert (batched - clean).abs().max() > 1e-3  # the noise does something


def test_group_rows_share_noise_and_seeds_differ(model):
    P, G = 2, 3
    ids = ids_for(1).repeat(P * G, 1)  # the same prompt on every row: only the noise tells rows apart
    seeds = row_seeds(11, P, G, "group")
    with noise_context(model, SIGMA, seeds) as rn:
        out = logits(model, ids)
    assert len(rn.unique_seeds) == P
    for p in range(P):
        for g in range(1, G):
            assert torch.allclose(out[p * G + g], out[p * G], **TOL)
        assert torch.allclose(out[p * G], step_logits(model, ids[:1], seeds[p * G])[0], **TOL)
    assert (out[0] - out[G]).abs().max() > 1e-3  # different groups, different noise
    with noise_context(model, SIGMA, row_seeds(11, P, G, "rollout")):
        per_row = logits(model, ids)
    assert (per_row[0] - per_row[1]).abs().max() > 1e-3


def test_step_granularity_uses_perturbed(model):
    ids = ids_for(3)
    seeds = row_seeds(5, 3, 1, "step")
    with noise_context(model, SIGMA, seeds) as rn:
        out = logits(model, ids)
    assert rn is None and n_hooks(model) == 0
    assert torch.equal(out, step_logits(model, ids, seeds[0]))


def test_sigma_zero_is_identical_across_granularities(model, toy_tok):
    ids = ids_for(4)
    clean = logits(model, ids)
    cfg = RolloutConfig(max_new_tokens=5, batch_size=3)
    prompts = ["12+3=", "7*8="]
    runs = []
    for gran in ("step", "group", "rollout"):
        with noise_context(model, 0.0, row_seeds(3, 2, 2, gran)) as rn:
            assert rn is None
            assert torch.equal(logits(model, ids), clean)
            runs.append(sample(model, toy_tok, prompts, 2, cfg, torch.Generator().manual_seed(0), row_noise=rn))
    for ro in runs[1:]:
        assert torch.equal(ro.completion_ids, runs[0].completion_ids)
        assert torch.equal(ro.sampler_logp, runs[0].sampler_logp)


@pytest.mark.parametrize("gran,batch_size", [("rollout", 4), ("group", 4), ("group", 3)])
def test_sampled_logprobs_match_each_rows_noisy_policy(model, toy_tok, gran, batch_size):
    """Decode with a KV cache, sub-batches and `select`: every sampled token's log π_θ̃ equals a
    teacher-forced pass of that row's own noisy policy built by `perturbed`."""
    P, G = 3, 2
    seeds = row_seeds(13, P, G, gran)
    cfg = RolloutConfig(max_new_tokens=6, batch_size=batch_size)
    with noise_context(model, SIGMA, seeds, "all") as rn:
        ro = sample(model, toy_tok, ["12+3=", "7*8=", "9"], G, cfg, torch.Generator().manual_seed(0), row_noise=rn)
    Tp = ro.prompt_ids.shape[1]
    for r in range(P * G):
        ids = torch.cat([ro.prompt_ids[r], ro.completion_ids[r]])[None]
        mask = torch.cat([ro.prompt_mask[r], ro.completion_mask[r]])[None]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with perturbed(model, SIGMA, seeds[r], "all"), torch.no_grad():
            lp = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, Tp - 1 : -1].log_softmax(-1)
        ref = lp.gather(-1, ro.completion_ids[r][:, None])[:, 0]
        valid = ro.completion_mask[r].bool()
        assert torch.allclose(ro.sampler_logp[r][valid], ref[valid], atol=1e-4), f"row {r}"


def test_exit_restores_weights_and_removes_hooks(model):
    before, hooks = snapshot(model), n_hooks(model)
    ids = ids_for(4)
    for gran in ("step", "group", "rollout"):
        with noise_context(model, SIGMA, row_seeds(1, 2, 2, gran)):
            logits(model, ids)
        with pytest.raises(KeyError, match="boom"):
            with noise_context(model, SIGMA, row_seeds(2, 2, 2, gran)):
                logits(model, ids)
                raise KeyError("boom")
        assert n_hooks(model) == hooks
        after = snapshot(model)
        assert all(torch.equal(before[k], after[k]) for k in before), gran


def test_wrong_batch_and_bad_rows_fail_loudly(model):
    with noise_context(model, SIGMA, row_seeds(1, 2, 2, "rollout")) as rn:
        rn.select(torch.tensor([0, 1]))
        with pytest.raises(RuntimeError, match="select"):
            logits(model, ids_for(4))
        with pytest.raises(ValueError, match="row ids"):
            rn.select(torch.tensor([4]))
    with pytest.raises(ValueError, match="one seed per row"):
        with noise_context(model, SIGMA, []):
            pass


def test_disabled_adapter_gets_no_noise(model):
    ids = ids_for(2)
    with model.disable_adapter():
        base = logits(model, ids)
    with noise_context(model, SIGMA, row_seeds(1, 1, 2, "rollout")):
        with model.disable_adapter():
            assert torch.allclose(logits(model, ids), base, atol=0, rtol=0)


def test_nf4_base_rows_match_step_path(tmp_path):
    """The QLoRA case: peft's bitsandbytes Linear4bit layers take the same hooks."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = Qwen2ForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map={"": "cpu"})
    m = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"])).eval()
    assert "Linear4bit" in type(m.get_submodule("base_model.model.model.layers.0.mlp.up_proj")).__name__
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    ids, seeds = ids_for(3), row_seeds(3, 3, 1, "rollout")
    with noise_context(m, SIGMA, seeds) as rn:
        assert rn is not None
        out = logits(m, ids)
    for r in range(3):
        assert torch.allclose(out[r], step_logits(m, ids[r : r + 1], seeds[r])[0], **TOL)
    assert n_hooks(m) == 0
