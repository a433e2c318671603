"""Models: resolve a name, load the base (NF4 4-bit or full precision), attach LoRA.

The base is loaded in 4-bit NF4 with bitsandbytes (double quantization, bf16 compute on CUDA,
fp32 on CPU) and prepared for k-bit training; peft adds LoRA adapters (rank R, scale α/R) to
the attention and/or MLP projections. Only the adapters train, and only they get PSN noise.

The local models (`tiny`, `testbed`, `ceiling`: local_models.py, shipped in the repository's models/) take the
exact same loading path as a hub model.
"""
from __future__ import annotations

import difflib
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from minipsn.run.config import Config, LoraConfig, ModelConfig
from minipsn.run.hub import check_reachable
from minipsn.run.presets import LOCAL_MODELS, local_spec
from minipsn.tasks.local_models import local_model_dir

ALIASES = {
    "qwen-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen-7b": "Qwen/Qwen2.5-7B-Instruct",
    "qwen-math-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "qwen-math-7b": "Qwen/Qwen2.5-Math-7B",
    # another family for replication (examples/one_gpu_comparison.py): Llama's projection names and chat template
    # load as Qwen2's do (tests/test_one_gpu.py runs a Llama-shaped model through the kit); gated: accept its licence
    "llama-1b": "meta-llama/Llama-3.2-1B-Instruct",
}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGETS = {"attn": ATTN, "mlp": MLP, "all": ATTN + MLP}
# bitsandbytes' CPU backend warns, when it is first imported (by peft, by TRL, or here), that it cannot fetch an
# optional kernel from the hub (it falls back to its own): keep that one logger's warnings out of every command
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

def resolve_name(name: str) -> str:
    """An alias, a local folder or a hub id (`org/name`) → what `from_pretrained` takes."""
    if local_spec(name) is not None:
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
    if local_spec(name) is not None or (Path(name).is_dir() and name not in ALIASES):
        return
    repo = resolve_name(name)
    if name not in ALIASES and (repo.startswith((".", "/", "~")) or repo.count("/") != 1):
        raise ValueError(f"model folder {name} does not exist; give an existing folder, an alias or a hub id (org/name)")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"model {name} ({repo}) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                         f"download it once with the network (hf download {repo}), or use a local folder or tiny")
    check_reachable(repo, "model", f"model {name} ({repo})", "a cached model or a local folder")


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
    if quant is not None and (cfg.dequantize_once == "on" or cfg.dequantize_once == "auto" and device.type == "cpu"):
        dequantize_once(model)
    return model, load_tokenizer(path)


def _dequantized(weight, state, dtype: torch.dtype) -> torch.Tensor:
    """A 4-bit weight's values in `dtype`, by the very ops bitsandbytes' 4-bit matmul runs at each call (its nested
    absmax first), so the cached weight is bit for bit the one each call would make."""
    absmax = state.absmax
    if state.nested:
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(state.absmax, state.state2.absmax, state.state2.code,
                                                                     256, torch.float32) + state.offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(weight.view(-1, 1), absmax, state.blocksize, state.quant_type,
                                                         state.shape, dtype)


def _forward_dequantized(module, x: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' Linear4bit.forward with the weight dequantized once: x in the compute dtype, the bias cast to
    it, F.linear, back to x's dtype (what its matmul does after dequantizing)."""
    dtype = module.compute_dtype or x.dtype
    cache = module.__dict__.setdefault("_minipsn_dense", {})
    if dtype not in cache:
        cache[dtype] = _dequantized(module.weight.data, module.weight.quant_state, dtype)
    bias = None if module.bias is None else module.bias.to(dtype)
    return torch.nn.functional.linear(x.to(dtype), cache[dtype], bias).to(x.dtype)


def dequantize_once(model) -> int:
    """Every bitsandbytes 4-bit linear layer of `model` computes with its weight dequantized once (the first call)
    instead of at every forward and backward; returns how many. The 4-bit weights stay (the sampler's copy and a
    saved adapter read them); the learner gets a full-precision base's speed and memory."""
    import types

    from bitsandbytes.nn import Linear4bit

    count = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.forward = types.MethodType(_forward_dequantized, module)
            count += 1
    return count


def attach_lora(model, cfg: LoraConfig, gradient_checkpointing: bool = True):
    """Freeze the base, prepare it for k-bit training, add LoRA adapters (peft)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(TARGETS[cfg.targets]), task_type="CAUSAL_LM")
    with checkpointing_rename_quiet():
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return get_peft_model(model, peft_cfg)


@contextmanager
def checkpointing_rename_quiet():
    """transformers 5 renamed gradient checkpointing to activation checkpointing; peft, TRL and the 4.x name this
    kit still calls (to run on both) raise a FutureWarning at every adapter, which a user can do nothing about.
    Those warnings alone are silenced, in the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing(_enable)?` is deprecated",
                                category=FutureWarning)
        yield


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
    with checkpointing_rename_quiet():
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
