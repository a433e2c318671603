"""Models: resolve a name, load the base (NF4 4-bit or full precision), attach LoRA, build `tiny`.

The base is loaded in 4-bit NF4 with bitsandbytes (double quantization, bf16 compute on CUDA,
fp32 on CPU) and prepared for k-bit training; peft adds LoRA adapters (rank R, scale α/R) to
the attention and/or MLP projections. Only the adapters train, and only they get PSN noise.

`tiny` is a small Qwen2-architecture model built from a config with a tokenizer trained in
seconds by the `tokenizers` library, warm-started by a short supervised pass on the synthetic
task (sft.py: worked solutions mixed with answers given after the first step, so RL starts with
pass@1 between 0 and 1 and a habit to unlearn) and cached on disk. It takes the exact same
loading path as a hub model afterwards.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
from pathlib import Path

import torch

from minipsn.config import Config, DataConfig, LoraConfig, ModelConfig

ALIASES = {
    "qwen-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "qwen-math-7b": "Qwen/Qwen2.5-Math-7B",
}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = {"attn": ATTN, "mlp": MLP, "all": ATTN + MLP}

# Bump when the tiny model's recipe changes, so stale caches are rebuilt.
TINY_VERSION = "v4"
TINY_SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def resolve_name(name: str) -> str:
    """An alias, a local folder or a hub id (`org/name`) → what `from_pretrained` takes."""
    if name in LOCAL_MODELS:
        return str(local_model_dir(name))
    if name in ALIASES:
        return ALIASES[name]
    if Path(name).is_dir() or "/" in name:
        return name
    close = difflib.get_close_matches(name, [*LOCAL_MODELS, *ALIASES], n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}: use an alias ({', '.join([*LOCAL_MODELS, *ALIASES])}), "
                     f"a Hugging Face id (org/name) or a local folder{hint}")


def check_available(name: str) -> None:
    """Fail in one line, before any run folder is made, when `name` is a hub model that cannot load:
    not in the local cache while offline (HF_HUB_OFFLINE), the hub unreachable, or no such model.
    One request at most (the hub's downloads retry a dead network for close to a minute per file);
    a cached or local model is not checked."""
    if name in LOCAL_MODELS or (Path(name).is_dir() and name not in ALIASES):
        return
    repo = resolve_name(name)
    if name not in ALIASES and (repo.startswith((".", "/", "~")) or repo.count("/") != 1):
        raise ValueError(f"model folder {name} does not exist; give an existing folder, an alias or a hub id (org/name)")
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"model {name} ({repo}) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                         f"download it once with the network (hf download {repo}), or use a local folder or tiny")
    client_error = HfHubHTTPError.__bases__[0]  # the hub's HTTP client's base error: no network, timeouts
    try:
        HfApi().model_info(repo, timeout=10)
    except GatedRepoError:
        raise ValueError(f"model {name} ({repo}) is gated on the Hugging Face hub: accept its licence on "
                         f"huggingface.co/{repo} and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"model {name} ({repo}) was not found on the Hugging Face hub (or it is private: "
                         "hf auth login); check the id") from None
    except (client_error, OSError) as e:
        raise ValueError(f"model {name} ({repo}) is not cached and the Hugging Face hub cannot be reached "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else 'no detail'}); "
                         "check the network, or set HF_HUB_OFFLINE=1 and use a cached model or a local folder") from None


def quiet_loading() -> None:
    """No "Loading weights" bar on every load (six in one compare); the hub's download bars stay."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    downloads = not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # this also turns off the hub's bars
    if downloads:
        enable_progress_bars()


def pick_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device=cuda but no CUDA device is visible; use model.device=auto or cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def pick_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """`model.dtype`: the dtype of the base's weights and matmuls (auto: bfloat16 on CUDA, float32 on the CPU)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def _quantization_config(cfg: ModelConfig, device: torch.device):
    """A BitsAndBytesConfig for NF4, or None (full precision) with one line saying why."""
    if cfg.quantize == "none":
        print("note: model.quantize=none, the base loads in full precision")
        return None
    # bitsandbytes' CPU backend warns that it cannot fetch an optional kernel from the hub (we are offline by
    # design; it falls back to its own kernel), once per process: keep that out of the run's output
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        print(f"note: bitsandbytes is not usable ({e}); the base loads in full precision")
        return None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=pick_dtype(cfg, device))


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # prompts are left-padded so every row's completion starts at one column
    return tok


def load_base(cfg: ModelConfig):
    """The frozen base model and its tokenizer, on the configured device."""
    from transformers import AutoModelForCausalLM

    device = pick_device(cfg)
    path = resolve_name(cfg.name)
    quant = _quantization_config(cfg, device)
    kwargs = dict(dtype=pick_dtype(cfg, device), device_map={"": str(device)})
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (RuntimeError, ValueError, ImportError) as e:
        if quant is None:
            raise
        print(f"note: 4-bit loading failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
              "the base loads in full precision")
        kwargs.pop("quantization_config")
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False  # the learner never needs a KV cache; rollout passes its own
    return model, load_tokenizer(path)


def attach_lora(model, cfg: LoraConfig, gradient_checkpointing: bool = True):
    """Freeze the base, prepare it for k-bit training, add LoRA adapters (peft)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(TARGETS[cfg.targets]), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def load_policy(cfg: Config, adapter: str | None = None):
    """Base + LoRA adapter (fresh, or loaded from a saved adapter folder) and the tokenizer."""
    check_available(cfg.model.name)
    quiet_loading()
    model, tok = load_base(cfg.model)
    if adapter is None:
        return attach_lora(model, cfg.lora, cfg.model.gradient_checkpointing), tok
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ValueError(f"{adapter} holds no adapter (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, adapter, is_trainable=True), tok


def lora_parameters(model, targets: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA A/B weights of the projections named by `targets` (mlp, attn, all)."""
    names = TARGETS[targets]
    out = {}
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and any(f".{t}." in name for t in names):
            out[name] = p
    if not out:
        raise ValueError(f"the model has no LoRA weights on {targets} projections; check lora.targets")
    return out


def dense_weight(p: torch.Tensor) -> torch.Tensor:
    """The full-precision value of a base weight: dequantized if it is a bitsandbytes 4-bit tensor."""
    state = getattr(p, "quant_state", None)
    if state is not None:
        import bitsandbytes.functional as bnbf

        if getattr(state, "packing_format_for_cpu", False):
            raise ValueError("the 4-bit base was repacked for bitsandbytes' CPU inference kernel (bf16) by an "
                             "eval forward before the fast engine was built; build the engine first or use "
                             "rollout.engine=lean")
        return bnbf.dequantize_4bit(p.data, state)
    if not p.is_floating_point():
        raise ValueError(f"cannot fold into a {p.dtype} base weight (8-bit?); use rollout.engine=lean")
    return p.data


# ---------------------------------------------------------------- the tiny model


# The models built locally: name → what `build_tiny` takes, and the cache folder's version. `testbed` is the
# exploration testbed: each answer is the tuple of three values (a guess is rarely right), and its warm
# start boxes that tuple for 40 % of the problems that open with an addition and never for those that
# open with a subtraction (sft.py; docs/RESULTS.md, "The exploration testbed"). `ceiling` is the ceiling testbed:
# the same chains asked for the last value (final) or every value (steps), each kind's habit the other's
# answer (30 % of final demonstrations box the tuple, 97 % of steps ones the last value), warm-started on
# half of each kind; RL trains on its own mix (presets.py), where GRPO narrows the steps kind's pass@256
# (docs/RESULTS.md, "The ceiling testbed").
LOCAL_MODELS: dict[str, dict] = {
    "tiny": {"version": TINY_VERSION, "data": DataConfig()},
    "testbed": {"version": "v3", "data": DataConfig(n_ops=3, answer="steps", n_train=4000), "steps": 800,
                "habit": {"add": 0.6, "subtract": 1.0}},
    "ceiling": {"version": "v2", "data": DataConfig(n_ops=3, answer="mixed", steps_share=0.5, n_train=4000),
                "steps": 800, "habit": {"final": 0.3, "steps": 0.97}},
}


def local_model_dir(name: str) -> Path:
    """Folder of a locally built model (`tiny`, `testbed`, `ceiling`); built when missing (tiny: about 4
    minutes on 2 cores, testbed: about 5, ceiling: about 8 on one core) and cached in $MINIPSN_CACHE or
    ~/.cache/minipsn."""
    spec = dict(LOCAL_MODELS[name])
    root = Path(os.environ.get("MINIPSN_CACHE", Path.home() / ".cache" / "minipsn"))
    folder = root / f"{name}-{spec.pop('version')}"
    if not (folder / "done").exists():
        build_tiny(folder, **spec, name=name)
    return folder


def tiny_model_dir() -> Path:
    """Folder of the warm-started tiny model; built (about 4 minutes on 2 cores) when missing."""
    return local_model_dir("tiny")


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
               habit: float | dict | None = None, name: str = "tiny", threads: int = 0) -> Path:
    """Build and warm-start a tiny model into `folder`: by default the `tiny` preset's model; other
    synthetic-task settings (`data`), warm-start lengths (`steps`), seeds (of the init and the warm-start
    order) and habit shares (`habit`, sft.py) give variants to train
    with `--model FOLDER` (the tiny preset's settings then come from `--set`). `name` is what the
    progress line calls it (tiny, testbed, ceiling). `threads`: torch threads of the warm start (0 = every
    core; $MINIPSN_BUILD_THREADS sets it for a cached model's build)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from minipsn.data import format_prompt
    from minipsn.sft import HABIT, WARM_STEPS, warm_start
    from minipsn.synthetic import synthetic_split

    folder, data = Path(folder), data or DataConfig()
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
            warm_start(model, tok, records, steps=steps or WARM_STEPS, seed=seed, habit=habit)
    finally:
        torch.set_num_threads(before)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "done").write_text(json.dumps({"version": TINY_VERSION, "data": dataclasses.asdict(data),
                                          "warm_steps": steps or WARM_STEPS, "seed": seed,
                                          "habit": habit}))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)  # atomic: a concurrent builder that lost the race keeps its own copy out
    except OSError:
        if not (folder / "done").exists():
            raise
    return folder
