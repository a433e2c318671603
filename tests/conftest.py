"""Shared fixtures: a seeded random-init Qwen2 policy with LoRA, small enough to build in a second."""
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny matrices: one thread is as fast and never oversubscribes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"  # the evaluation sets that ship with the repository
TRAIN_DATA = REPO.parent / "shared" / "data"  # the training sets, where a checkout has them (data/README.md)


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` runs under `make test-slow` (MINIPSN_SLOW=1) only: `make test` stays near 5 minutes."""
    if os.environ.get("MINIPSN_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow (more than ~20 s on 2 cores): make test-slow, or MINIPSN_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


def data_file(name: str) -> Path:
    """A benchmark file: the bundled copy, else the training sets' folder (may not exist)."""
    return DATA / name if (DATA / name).is_file() else TRAIN_DATA / name


# Modules whose tests load the warm-started `tiny` model (some in subprocesses under a time limit).
TINY_MODULES = {"test_bench", "test_core", "test_distributed", "test_engine", "test_errors", "test_evaluate", "test_examples", "test_learner",
                "test_methods", "test_noise", "test_noise_terms", "test_resume", "test_run_integrity", "test_sampler", "test_train", "test_verify", "test_arms"}
TINY_BUILD_LIMIT_S = 3600  # about 3 min on 2 quiet cores; a slow, busy laptop gets twenty times that


@pytest.fixture(scope="session")
def tiny_model():
    """Build the tiny model once, before the first test that needs it, under a limit of its own, so
    no test's own time limit includes the build."""
    import subprocess
    import sys

    code = "from minipsn.tasks.local_models import tiny_model_dir; print(tiny_model_dir())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=TINY_BUILD_LIMIT_S)
    if proc.returncode != 0:
        pytest.fail(f"building the tiny model failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _tiny_model_first(request):
    if request.module.__name__.rpartition(".")[2] in TINY_MODULES:
        request.getfixturevalue("tiny_model")


@pytest.fixture
def small_policy():
    """A 2-layer Qwen2 with LoRA (rank 4) on all projections; B weights randomised so LoRA matters."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from minipsn.tasks.models import checkpointing_rename_quiet

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = Qwen2ForCausalLM(cfg)
    with checkpointing_rename_quiet():  # as the kit wraps its own models (models.attach_lora)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                      "o_proj", "gate_proj", "up_proj",
                                                                                      "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


class ToyTokenizer:
    """Just enough of a tokenizer for the rollout: ids are characters' codes modulo the vocabulary."""

    eos_token_id, pad_token_id, eos_token = 1, 0, "<eos>"

    def __call__(self, texts, return_tensors=None, padding=True, add_special_tokens=False):
        rows = [[2 + (ord(ch) % 60) for ch in t] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(str(int(i)) for i in row if int(i) > 1) for row in ids]


@pytest.fixture
def toy_tok():
    return ToyTokenizer()
