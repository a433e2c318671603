"""The local models: `tiny`, `testbed`, `ceiling` and `route`, small Qwen2-architecture models the kit builds and ships
(a design still being tuned can be left out of models/: presets.NOT_SHIPPED, built on first use and cached).

Each is built from a config, with a byte-level BPE tokenizer trained in seconds by the `tokenizers` library,
and warm-started by a short supervised pass on its synthetic task (sft.py: worked solutions mixed with a habit,
so RL starts with pass@1 between 0 and 1 and something to unlearn). A build is deterministic on one machine,
but floats summed in another order on another CPU make another model, so the seed-0 builds ship in the
repository's models/ folder (their files' SHA-256 in each folder's `done`, checked by the tests): every machine
loads the same bits, and no first run waits for a build. `<name>-b<k>` is the same recipe with build seed k
(init and warm-start order): another model of the same design, built on first use and cached in $MINIPSN_CACHE
or ~/.cache/minipsn. `python cli.py build` builds any of them again and says whether the bits match. Their
recipes and names are presets.LOCAL_MODELS and presets.local_spec (build_config reads the names).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from minipsn.run.config import DataConfig
from minipsn.run.presets import LOCAL_MODELS, local_spec

SHIPPED = Path(__file__).resolve().parents[2] / "models"  # the seed-0 builds, in the repository
TINY_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def folder_name(name: str) -> str:
    base, seed = local_spec(name)
    return f"{base}{f'-b{seed}' if seed else ''}-{LOCAL_MODELS[base]['version']}"


def local_model_dir(name: str) -> Path:
    """Folder of a local model (`tiny`, `ceiling-b2`, …): the shipped build when the repository holds it, else the
    cached one, built when missing (tiny: about 3 minutes on 2 quiet cores, testbed and ceiling about 5)."""
    base, seed = local_spec(name)
    if (SHIPPED / folder_name(name) / "done").is_file():
        return SHIPPED / folder_name(name)
    folder = Path(os.environ.get("MINIPSN_CACHE", Path.home() / ".cache" / "minipsn")) / folder_name(name)
    if not (folder / "done").exists():
        spec = {k: v for k, v in LOCAL_MODELS[base].items() if k != "version"}
        build_tiny(folder, **spec, seed=seed, name=name)
    return folder


def tiny_model_dir() -> Path:
    """Folder of the warm-started tiny model."""
    return local_model_dir("tiny")


def file_digests(folder: Path) -> dict[str, str]:
    """{file name: SHA-256} of a built model's files (all but `done`, which records them)."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
            if f.is_file() and f.name != "done"}


def rebuild(name: str, out: str | Path, threads: int = 0) -> dict:
    """Build local model `name` (its recipe and build seed) into `out` and compare its files with the shipped
    build of the same name: {"folder", "shipped" (its folder or None), "same" (True, False, or None when nothing
    of that name ships), "differ" (the files whose bytes differ), "seconds"}."""
    import time

    spec = local_spec(name)
    if spec is None:
        raise ValueError(f"unknown local model {name!r}: use one of {', '.join(LOCAL_MODELS)}, or NAME-bK for build seed K")
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists; build into a new folder (--out)")
    t0 = time.perf_counter()
    build_tiny(out, **{k: v for k, v in LOCAL_MODELS[spec[0]].items() if k != "version"}, seed=spec[1], name=name,
               threads=threads)
    shipped = SHIPPED / folder_name(name)
    want = json.loads((shipped / "done").read_text())["files"] if (shipped / "done").is_file() else None
    got = file_digests(out)
    differ = None if want is None else sorted(f for f in {*want, *got} if want.get(f) != got.get(f))
    return {"folder": str(out), "shipped": str(shipped) if want is not None else None,
            "same": None if want is None else not differ, "differ": differ, "seconds": time.perf_counter() - t0}


def _train_tokenizer(texts: list[str]):
    """A byte-level BPE with Qwen2's normaliser and pre-tokenizer, so `AutoTokenizer` reloads it
    as `Qwen2Tokenizer` with the same ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", chat_template=TINY_CHAT_TEMPLATE)


@contextlib.contextmanager
def _warm_start_progress(model, name: str, steps: int):
    """A progress bar over the warm start's steps. Each step is one forward pass of the model, so a
    forward hook counts them (sft.warm_start stays a plain loop without a callback)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"[bold]building {name}: warm start"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("warm start", total=steps)
        hook = model.register_forward_hook(lambda *_: bar.advance(task))
        try:
            yield
        finally:
            hook.remove()


def build_tiny(folder: str | Path, data: DataConfig | None = None, steps: int | None = None, seed: int = 0,
               habit: float | dict | None = None, name: str = "tiny", threads: int = 0, slip: float = 0.0,
               cue: float = 0.0) -> Path:
    """Build and warm-start a tiny model into `folder`: by default the `tiny` preset's model; other
    synthetic-task settings (`data`), warm-start lengths (`steps`), build seeds (of the init and the warm-start
    order), habit shares (`habit`, sft.py) and, on the route task, the rare route's slip rate (`slip`) and its cued
    share (`cue`) give variants
    to train with `--model FOLDER` (the tiny preset's settings then come from `--set`). `name` is what the progress
    line calls it. `threads`: torch threads of the warm start (0 = every core; $MINIPSN_BUILD_THREADS sets it for a
    cached model's build)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from minipsn.tasks.data import format_prompt
    from minipsn.tasks.sft import HABIT, WARM_STEPS, warm_start
    from minipsn.tasks.synthetic import synthetic_split

    folder, data = Path(folder), data or DataConfig()
    for knob, value in (("slip", slip), ("cue", cue)):
        if value and data.answer != "route":
            raise ValueError(f"{knob}={value} is the route task's warm-start knob; drop it or use data.answer=route")
    records = synthetic_split(data, "train", seed=0)
    tok = _train_tokenizer([r["problem"] + "\n" + r["solution"] for r in records[:5000]]
                           + [format_prompt(None, "x", "plain"), "user\nassistant\n"] * 50)
    tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TINY_SHAPE)
    model = Qwen2ForCausalLM(config)
    print(f"building the {name} model ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params): "
          f"warm start on the synthetic task, once (minutes); cached in {folder}", flush=True)
    env = os.environ.get("MINIPSN_BUILD_THREADS", "0")
    if not env.isdigit():
        raise ValueError(f"MINIPSN_BUILD_THREADS must be a number of threads (0 = every core), got {env!r}")
    before = torch.get_num_threads()
    # the one sizeable CPU job here: every core, unless told otherwise (a machine shared with other jobs)
    torch.set_num_threads(threads or int(env) or os.cpu_count() or 1)
    try:
        habit = HABIT if habit is None else habit
        with _warm_start_progress(model, name, steps or WARM_STEPS):
            warm_start(model, tok, records, steps=steps or WARM_STEPS, seed=seed, habit=habit, slip=slip, cue=cue)
    finally:
        torch.set_num_threads(before)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    spec = local_spec(name)
    (tmp / "done").write_text(json.dumps({"name": name, "version": LOCAL_MODELS[spec[0]]["version"] if spec else None,
                                          "data": dataclasses.asdict(data), "warm_steps": steps or WARM_STEPS,
                                          "seed": seed, "habit": habit, "slip": slip, "cue": cue, "torch": torch.__version__,
                                          "files": file_digests(tmp)}, indent=1))
    try:
        tmp.rename(folder)  # atomic: a concurrent builder that lost the race keeps its own copy out
    except OSError:
        if not (folder / "done").exists():
            raise
    return folder
