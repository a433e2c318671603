"""`cli.py bench` on the CPU at a toy size: bench.json has every section and its keys (not the speed), TRL's
GRPOTrainer runs on the same policy or says why not, and the rich tables render."""
import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import DATA, REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
ROLLOUT_KEYS = {"new_tokens", "tokens", "seconds", "tokens_per_s", "noise_in_ms", "noise_out_ms", "peak_gb"}
STEP_KEYS = {"step_s", "sample_s", "learn_s", "psn_s", "sched_s", "psn_pct", "sched_pct", "peak_gb", "warmup_step_s"}


@pytest.mark.slow
def test_cli_bench_writes_every_section(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "bench", "--out", str(out), "--model", "tiny",
                           "--quick", "--no-trl", "--steps", "1", "--paths", "lean,fast", "--step-engines", "fast",
                           "--prompts", "2", "--group", "2", "--tokens", "4", "--verifier-pairs", "5"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr == "" and "kernels-community" not in proc.stdout  # bitsandbytes' kernel note, warnings
    assert "rollouts · tiny" in proc.stdout and "PSN-GRPO steps" in proc.stdout and "bench.json" in proc.stdout
    report = json.loads((out / "bench.json").read_text())
    assert {"cpu", "cpu_cores", "torch", "cuda_device", "transformers", "trl"} <= report["machine"].keys()
    tiny = report["models"]["tiny"]
    assert tiny["spec"]["P"] == 2 and tiny["spec"]["G"] == 2 and tiny["spec"]["T"] == 4
    assert set(tiny["engines"]) == {"lean", "fast"}
    for name, e in tiny["engines"].items():
        assert ROLLOUT_KEYS <= e["rollout"].keys()
        assert e["rollout"]["tokens"] == 2 * 2 * 4  # the end token is suppressed: every row runs T tokens
        assert ("step" in e) == (name == "fast")
    assert STEP_KEYS <= tiny["engines"]["fast"]["step"].keys()
    for bound in (tiny["engines"]["fast"]["learn_bound"], tiny["eval"]["bound"]):  # roofline.py on the two big phases
        assert bound["gflop"] > 0 and 0 < bound["matmul_s"] and bound["floor_s"] > 0 and bound["top_other"]
        assert bound["floor_share"] == pytest.approx(bound["floor_s"] / bound["wall_s"])
        assert 0 < bound["matmul_share"] < 1 and bound["matmul_s"] + sum(o["s"] for o in bound["top_other"]) <= bound["profiled_s"] * 1.0001
    assert "learn_bound" not in tiny["engines"]["lean"] and "what bounds a phase · tiny" in proc.stdout
    assert 0 <= tiny["engines"]["fast"]["step"]["psn_pct"] <= 100
    assert tiny["trl"] == {"skipped": "--no-trl"} and tiny["trl_ratio"] == {}
    ev = tiny["eval"]  # evaluation sampling: the kit's paths next to HF generate on the same work
    assert (ev["problems"], ev["n"], ev["new_tokens"]) == (2, 16, 16) and ev["engine"] == "fast"
    assert set(ev["paths"]) == {"minipsn eval", "minipsn plain loop", "HF generate"}
    for path in ev["paths"].values():
        assert 0 < path["tokens"] <= 2 * 16 * 16 and path["tokens_per_s"] > 0
    assert ev["paths"]["minipsn eval"]["tokens"] == ev["paths"]["minipsn plain loop"]["tokens"]  # the same samples
    assert ev["paths"]["HF generate"]["vs_generate"] == 1.0 and "evaluation sampling · tiny" in proc.stdout
    v = report["verifier"]  # MATH-500 ships in data/, the default: a fresh clone reports the verifier too
    assert v["source"] == str(DATA / "math500_test.jsonl")
    assert v["checks"] == 5 and v["checks_per_s"] > 0
    hard = v["symbolic"]  # a mix that reaches the sympy stage, not only exact matches
    assert hard["checks"] == hard["worker_checks"] == 5 and hard["checks_per_s"] > 0


def test_bench_refuses_unknown_engines_and_cpu_only_shapes(tmp_path):
    from minipsn.bench import run_bench, specs

    with pytest.raises(ValueError, match="unknown engine"):
        run_bench(str(tmp_path), paths=("vllm",))
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            specs("cpu", True, "qwen2.5-1.5b-shape")


@pytest.mark.slow
def test_trl_grpo_trainer_runs_the_same_work(tmp_path, capfd):
    """10-20 s on 2 shared cores (a warm-up step and a timed one at 2×2 rows × 4 tokens); it prints nothing of TRL's
    own (its dict of totals) and raises no deprecation warning."""
    import warnings

    pytest.importorskip("trl")
    from minipsn.bench import Spec, bench_trl

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = bench_trl(Spec("tiny", "tiny", "chat", 2, 2, 4, 4), str(tmp_path), 0.01, 1)
    assert "skipped" not in result, result
    assert not [str(w.message) for w in seen if w.category is FutureWarning and "checkpointing" in str(w.message)]
    assert "train_runtime" not in capfd.readouterr().out
    assert result["step_s"] > 0 and result["steps_timed"] == 1 and result["micro_batch_rows"] >= 1
    print(f"TRL bench on tiny took {time.perf_counter() - t0:.1f} s")


def test_the_qwen_shaped_path_runs_at_a_toy_size_on_cpu(tmp_path, monkeypatch):
    """What the GPU run does for the 1.5B-shaped model (random init, character tokenizer over the whole
    vocabulary, plain template, a fast-engine step), at hidden 64 and a 4096 vocabulary so it runs here."""
    from transformers import AutoTokenizer

    from minipsn import bench

    monkeypatch.setenv("MINIPSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bench, "QWEN15_SHAPE", {**bench.QWEN15_SHAPE, "hidden_size": 64, "intermediate_size": 128,
                                                "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 4096})
    folder = bench.shape_model_dir()
    assert bench.shape_model_dir() == folder and (folder / "done").exists()  # cached
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == bench.QWEN15_SHAPE["vocab_size"] and tok.decode(tok("x + 1")["input_ids"]) == "x + 1"
    assert "<t4095>" in tok.decode([4095])  # any sampled id decodes
    spec = bench.Spec(bench.SHAPE_NAME, str(folder), "plain", 2, 2, 4, 4, "cpu")
    out = bench.bench_engine(spec, "fast", str(tmp_path), 0.01, 1, 1, do_steps=True)
    assert out["rollout"]["tokens"] == 16 and out["step"]["step_s"] > 0


def test_phase_bound_counts_the_products_flops_and_names_the_rest():
    """roofline.phase_bound: the FLOPs are the products' exact count, the floor is those products timed alone, and
    the other operators are listed by own time; a phase with no product is refused."""
    import torch

    from minipsn.bench.roofline import phase_bound

    a, b, x = torch.randn(64, 32), torch.randn(32, 16), torch.randn(2000, 2000)
    bias, c = torch.randn(16), torch.randn(3, 8, 5)

    def phase():
        torch.mm(a, b)
        torch.addmm(bias, a, b)
        torch.bmm(c, c.transpose(1, 2))
        x.exp().exp()  # the phase's other work: far more time than the products

    out = phase_bound(phase, wall_s=1.0)
    assert round(out["gflop"] * 1e9) == 2 * (2 * 64 * 32 * 16) + 2 * 3 * 8 * 5 * 8
    assert out["floor_s"] > 0 and out["floor_share"] == out["floor_s"] / 1.0 and out["wall_s"] == 1.0
    assert out["top_other"][0]["op"] == "aten::exp" and out["top_other"][0]["share"] > out["matmul_share"]
    assert out["matmul_share"] == pytest.approx(out["matmul_s"] / out["profiled_s"])
    assert out["gflops"] == pytest.approx(out["gflop"] / out["matmul_s"])
    with pytest.raises(ValueError, match="no matrix product"):
        phase_bound(lambda: x.exp(), wall_s=1.0)
