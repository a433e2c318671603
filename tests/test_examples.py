"""Examples are programs: each runs on the tiny model here, so it cannot drift from the code."""
import json
import subprocess
import sys

from tests.conftest import REPO
from tests.test_train import ENV


def run_example(name, *args):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / name), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_quickstart_trains_and_samples(tmp_path):
    out = run_example("quickstart.py", "2", str(tmp_path / "q"))
    assert out.count("Q: ") == 3 and "gold answer" in out
    assert (tmp_path / "q" / "adapter" / "adapter_config.json").is_file()


def test_custom_reward_is_used(tmp_path):
    run_example("custom_reward.py", "2", str(tmp_path / "c"))
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # the shaped reward differs from plain accuracy (brevity bonus / missing-box penalty)
    assert any(abs(r["reward/mean"] - r["reward/accuracy"]) > 1e-6 for r in rows)


def test_gpu_recipes_run_on_the_tiny_model(tmp_path):
    env_tiny = {**ENV, "TINY": "1"}
    for name in ("qwen_gsm8k.py", "qwen_math.py"):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, str(REPO / "examples" / name), "", str(out)], cwd=REPO, env=env_tiny,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "qwen_math.py" / "eval" / "eval.json").is_file()


def test_psn_vs_grpo_example_writes_its_table(tmp_path):
    out = run_example("psn_vs_grpo_tiny.py", str(tmp_path / "cmp"), "1", "1", "4", "4")
    assert "| base (before RL) | 1 |" in out and "| grpo | 1 |" in out and "| psn-adaptive | 1 |" in out
    for f in ("compare.md", "compare.json", "compare.png"):
        assert (tmp_path / "cmp" / f).is_file()
