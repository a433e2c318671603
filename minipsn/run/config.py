"""Configuration: one frozen dataclass per concern, gathered into `Config`.

Every field has a type, a default and a one-line docstring (the comment above it) with its
paper symbol where there is one: P prompts per step, G group size, σ noise std, C TIS cap,
ε clip range, β KL weight, R LoRA rank. Validation runs in `__post_init__` so a bad value
fails where it is made, with a message that says what to change (checks.py holds the checks, one per section).

Overrides come as dotted strings (`noise.sigma=0.01`), parsed against the field types;
presets (per model) and methods (grpo, psn, ...) are plain dicts of such overrides, applied
in the order preset → method → config file → `--set` by overrides.py (presets.py holds them), which imports
this module, never the reverse. No default is written twice.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from minipsn.run import checks
from minipsn.verify import EXTRACTS, VERIFIERS


@dataclass(frozen=True)
class ModelConfig:
    # alias (tiny, qwen-0.5b, qwen-1.5b, ...), a Hugging Face id, or a local folder
    name: str = "tiny"
    # base weights: nf4 (4-bit, bitsandbytes) or none (full precision)
    quantize: str = "nf4"
    # auto: cuda if available, else cpu
    device: str = "auto"
    # dtype of the base's weights and matmuls (the NF4 compute dtype, or the full-precision weights); auto: bfloat16
    # on CUDA, float32 on the CPU. bfloat16 on the CPU runs the GPU's numerics. The LoRA adapter, its noise and the
    # optimizer stay float32 always; with nf4 so do the norms, embeddings, LM head and activations (k-bit training)
    dtype: str = "auto"
    # recompute activations in backward to save memory (learner only)
    gradient_checkpointing: bool = True
    # prompts longer than this many tokens are an error, not silently cut
    max_prompt_tokens: int = 512
    # nf4: dequantize each 4-bit weight once and keep it for the learner (the same values, bit for bit, as
    # dequantizing at every forward and backward; memory of a full-precision base): auto = on the CPU only, on, off
    dequantize_once: str = "auto"

    def __post_init__(self):
        checks.model_config(self)


@dataclass(frozen=True)
class LoraConfig:
    # R: adapter rank
    rank: int = 16
    # LoRA scale is alpha / R
    alpha: float = 32.0
    # dropout on the adapter's input: only 0, which keeps the learner (in train mode) the sampler's function; with
    # dropout the TIS ratio π_θ/π_θ̃ would compare another function than the one sampled, even at σ = 0
    dropout: float = 0.0
    # which projections get adapters: attn, mlp, or all (attention + MLP)
    targets: str = "all"

    def __post_init__(self):
        checks.lora_config(self)


@dataclass(frozen=True)
class DataConfig:
    # a bundled set (synthetic, gsm8k, math, math500, aime24, aime25, amc23, minerva, olympiadbench), else a local
    # file (.jsonl, .json, .parquet, .csv) or folder, else a Hugging Face dataset id (owner/name); user_data.py
    dataset: str = "synthetic"
    # folder of local JSON Lines files (else $MINIPSN_DATA_DIR, else the hub)
    data_dir: str = ""
    # prompt template: chat (tokenizer's chat template) or plain (base models), or your own text with {problem}: the
    # user's message in the chat template, or after "plain:" the whole prompt (data.py, format_prompt)
    template: str = "chat"
    # skip (and count) malformed rows instead of failing on the first one
    skip_bad_rows: bool = False
    # synthetic task: number of arithmetic operations per problem (the most, when min_ops is set)
    n_ops: int = 2
    # synthetic task: > 0 draws each problem's number of operations uniformly from min_ops..n_ops, so
    # short problems sit next to long ones (0 = every problem has n_ops)
    min_ops: int = 0
    # synthetic task: operations to draw from, any of + - *
    ops: str = "+-"
    # synthetic task: operands are drawn from 1..max_operand
    max_operand: int = 9
    # synthetic task: the start value is drawn from 1..max_start (0 = 1..max_operand); a large one makes
    # the answer space large, so a guessed answer is rarely right
    max_start: int = 0
    # synthetic task: what is asked, final (the last value) or steps (the tuple of every value on the way,
    # in order: a large answer space with single-digit arithmetic), or mixed (both kinds, see steps_share), or route
    # (the steps question, worked by a common route or a rare offset ledger; minipsn/tasks/route.py)
    answer: str = "final"
    # mixed task: share of the training problems that ask for every value (the rest ask for the last one);
    # the held-out split alternates the two kinds, so its first 2m problems hold m of each
    steps_share: float = 0.2
    # route task: share of the training problems with a negative value on the way (kind neg, where only the rare
    # route is right; the rest are pos); the held-out split alternates the two kinds, its first 2m hold m of each
    neg_share: float = 0.2
    # route task: the rare route's offset ("Shift by 10: 3 + 10 = 13"); no value of a chain is below
    # 1 - route_offset, so every shifted value is >= 1
    route_offset: int = 10
    # synthetic task: size of the training set
    n_train: int = 2000
    # synthetic task: size of the held-out set
    n_test: int = 200
    # your own data: the column that holds the problem ("" = the first of problem, question, prompt, query, input)
    problem_field: str = ""
    # your own data: the column that holds the gold answer ("" = the first of answer, final_answer, final,
    # ground_truth, gold, target, else solution); a worked solution's last \boxed{} (or #### N) is the answer
    answer_field: str = ""
    # a hub dataset's configuration (load_dataset's name; "" = its default)
    config: str = ""
    # the training split of a hub dataset or folder ("" = train); a file is one split
    split: str = ""
    # your own data's held-out problems: a split of the same hub dataset or folder, or a file ("" = none: the
    # periodic held-out evaluation, eval.every, is off)
    test_split: str = ""

    def __post_init__(self):
        checks.data_config(self)


@dataclass(frozen=True)
class NoiseConfig:
    # σ: std of the noise added to LoRA A/B before sampling; the σ controller's start value σ₀ (0 = off,
    # plain GRPO, and it stays 0). `python cli.py calibrate --model M` suggests one (watch noise/kl_noise)
    sigma: float = 0.003
    # which adapters get noise: mlp (paper's best), attn, or all
    targets: str = "mlp"
    # step: one draw shared by all N rows (paper); group: one per prompt's G rows; rollout: one per row
    granularity: str = "step"
    # N: with granularity step, N draws per step instead of one, each taking G/N rows of every group (C3PO's split of
    # a group across draws; advantages stay over the whole group); N divides G
    draws: int = 1
    # where the noise goes: lora (σ·ε on the LoRA A and B of the targets) or weight (σ·ε on the targets' dense base
    # weights in the sampler's copy, the paper's own form; needs the fast engine and one draw per step)
    space: str = "lora"
    # the σ controller, how σ moves: fixed, kl (variant I), adaptive (variant II with an operating point, default
    # for PSN), paper (variant II as published)
    control: str = "adaptive"
    # σ is clamped to [sigma_min, sigma_max] (when it is not 0): the lower bound
    sigma_min: float = 1e-6
    # the upper bound of σ (see sigma_min)
    sigma_max: float = 0.5

    def __post_init__(self):
        checks.noise_config(self)


@dataclass(frozen=True)
class ControlConfig:
    """The σ controller's settings (`noise.control` picks which one; see sigma_control.py)."""
    # kl (variant I): target of the noise's KL d = mean over tokens of log π_θ̃ − log π_clean
    kl_target: float = 0.003
    # kl: σ ← σ·α when d < target/band, σ ← σ/α when d > target·band (Plappert et al. 2018)
    kl_alpha: float = 1.01
    # kl: width of the dead band around the target, as a factor
    kl_band: float = 1.1
    # adaptive (variant II): λ, weight of the diversity z-score against the certainty z-score in
    # I = λ·z_D − (1 − λ)·z_s (z against the reference window)
    lam: float = 0.5
    # adaptive: I at which σ stays at its start value σ₀ (0 = as diverse and certain as the reference)
    target: float = 0.0
    # adaptive: set point log σ* = log σ₀ + gain·(target − I); 0.5: a collapse by 2 sd in both signals
    # (I = −2) asks for σ₀·e ≈ 2.7·σ₀
    gain: float = 0.5
    # adaptive: log σ moves this fraction of the way to the set point each step (0.1: under stationary
    # signals, log σ has sd ≈ 0.23·gain·sd(I), about ±8 % at the defaults)
    rate: float = 0.1
    # adaptive: steps at the start that hold σ at σ₀ and record the reference mean and sd of D and s
    window: int = 20
    # diversity measure D: hidden (cosine of mean-pooled hidden states) or ngram (distinct-n)
    diversity: str = "hidden"
    # paper (variant II as published): σ ← β·σ when I = λ·D + (1 − λ)·ŝ ≤ paper_target, else σ ← σ/β; β is this
    # (1.02: σ moves at most ×2.2 in 40 steps)
    paper_beta: float = 1.02
    # paper: the target of I (0.25: below its stationary mean ≈ 0.5·D + 0.25 on tiny, so σ rises only when the
    # groups are both alike and uncertain)
    paper_target: float = 0.25
    # paper: steps in the sliding window over which self-certainty is min-max normalised, ŝ ∈ [0, 1] (0.5 while it
    # has no spread); every controller logs ŝ and the paper's I, so runs compare
    paper_window: int = 20

    def __post_init__(self):
        checks.control_config(self)


@dataclass(frozen=True)
class GRPOConfig:
    # P: prompts per step
    prompts_per_step: int = 8
    # G: completions per prompt
    group_size: int = 8
    # ε: PPO clip range, ρ = π_θ/π_θold kept in [1 − ε, 1 + ε_high]; binds only with several updates per batch
    clip_eps: float = 0.2
    # ε_high: upper clip range (DAPO's clip-higher, e.g. 0.28); 0 = the same as clip_eps
    clip_eps_high: float = 0.0
    # μ: passes over each batch (TRL's num_iterations); 1 = on-policy, π_θold = π_θ and ρ ≡ 1
    epochs: int = 1
    # M: optimizer steps per pass, one per contiguous block of rows (a batch takes μ·M steps)
    mini_batches: int = 1
    # truncated importance sampling w = min(π_θold/π_θ̃, C) on or off (π_θold = π_θ with one update per batch)
    tis: bool = True
    # C: TIS cap
    tis_cap: float = 10.0
    # Seq-MIS (C3PO): a rollout whose sequence ratio π_θold(y)/π_θ̃(y) is outside [seq_mis_low, seq_mis_high] leaves the
    # loss (its tokens count 0; the normaliser is unchanged), on top of token TIS
    seq_mis: bool = False
    # Seq-MIS: the lower bound of the sequence ratio
    seq_mis_low: float = 0.5
    # Seq-MIS: the upper bound of the sequence ratio
    seq_mis_high: float = 2.0
    # β: KL-to-base weight (k3 estimator, reference = adapter disabled); 0 = off
    kl_beta: float = 0.0
    # divide group-centred rewards by the group std (GRPO); off for Dr. GRPO
    scale_advantages: bool = True
    # advantages: grpo (group-normalised) or passk (Pass@k training, Chen et al. 2025)
    advantage: str = "grpo"
    # k of Pass@k training
    passk_k: int = 4
    # token-mean, seq-mean (original GRPO) or dr-grpo (constant normaliser)
    loss_agg: str = "token-mean"
    # AdamW learning rate of the LoRA weights (the peak, under a schedule)
    lr: float = 1e-5
    # learning-rate schedule over the steps (a step's μ·M updates share one rate): constant, or linear /
    # cosine decay reaching 0 at run.steps
    lr_schedule: str = "constant"
    # linear warm-up from 0: lr·step/warmup_steps for the first warmup_steps steps (0 = none)
    warmup_steps: int = 0
    # AdamW weight decay of the LoRA weights
    weight_decay: float = 0.0
    # gradient norm clip (0 = off)
    max_grad_norm: float = 1.0
    # learner micro-batch size in tokens (prompt + completion); sets gradient accumulation
    micro_batch_tokens: int = 4096
    # policy temperature of π_θ in the learner (the rollout may sample at another one)
    temperature: float = 1.0

    def __post_init__(self):
        checks.grpo_config(self)


@dataclass(frozen=True)
class RolloutConfig:
    # completion length cap T; longer completions are truncated (and scored 0 by default)
    max_new_tokens: int = 512
    # sampling temperature of π_θ̃
    temperature: float = 1.0
    # nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p (1 = off)
    top_p: float = 1.0
    # rows sampled at once (halved on out-of-memory)
    batch_size: int = 64
    # auto, fast (folded copy: bf16 on CUDA, fp32 on CPU), lean (4-bit base + unmerged adapter), hf (unmerged)
    engine: str = "auto"
    # sampling generators: prompt (one per prompt, seeded by its index in the step: the same rollouts whatever the
    # number of processes or the other prompts of the call), batch (one per step for all rows; one process only);
    # auto is prompt (runs made before prompt became the default wrote auto)
    rng: str = "prompt"
    # warn when guard/sampler_gap, the mean |log π_sampler − log π_learner| per sampled token without noise, exceeds
    # this (nats; 0 = never): a sampler that lags the learner (docs/RESULTS.md sets it from healthy runs' spread)
    gap_warn: float = 5e-4
    # σ > 0: every this many steps (and at the first) a teacher-forced pass of the noisy sampler checks the decode
    # path that gave the TIS denominators (guard/decode_gap); under top_p < 1 it runs every step, as the exact noise KL
    # needs it (1 = every step)
    guard_every: int = 10

    def __post_init__(self):
        checks.rollout_config(self)


@dataclass(frozen=True)
class RewardConfig:
    # added to correctness: format_weight · [one non-empty \boxed{}]
    format_weight: float = 0.0
    # reward of a completion cut at max_new_tokens
    truncated_reward: float = 0.0
    # fall back to the last number when there is no \boxed{}, ####, or "the answer is"
    last_number: bool = True
    # accept an unboxed answer (####, "the answer is", "final answer", the last number); false insists
    # on \boxed{} (then last_number has no effect)
    unboxed_answer: bool = True
    # who judges an answer the cheap stages leave open: math-verify (Math-Verify behind the strict guards),
    # strict (the kit's sympy checks), both (correct only when both accept; verify/disagree counts the rest)
    verifier: str = VERIFIERS[0]
    # who reads the answer of a completion without a box: math-verify (its parse, as TRL's accuracy_reward; the
    # kit's reading where it finds nothing) or kit (the kit's rules alone); boxes are read alike by both
    extract: str = EXTRACTS[0]
    # hard time limit of one equivalence check, seconds
    timeout: float = 3.0
    # sympy worker processes that check a step's completions at once (each under reward.timeout); 1: serial
    verify_workers: int = 1
    # completions near rollout.max_new_tokens: none; soft (DAPO: add 0 … −1 over the last overlong_window
    # tokens, see rewards.overlong_penalty); mask (truncated rows leave the loss, still in rewards and baselines)
    overlong: str = "none"
    # soft: tokens over which the penalty falls from 0 to −1 (DAPO's L_cache); at most rollout.max_new_tokens
    overlong_window: int = 64
    # reward functions, summed with reward.weights (--reward, repeatable): module:function, path/file.py:function,
    # or verifier (the reward above); () = the verifier's alone (rewards/funcs.py)
    functions: tuple[str, ...] = ()
    # the weight of each reward function, in order (() = 1 each), as TRL's reward_weights
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        checks.reward_config(self)


@dataclass(frozen=True)
class EvalConfig:
    # completions per problem (pass@k for k = 1, 2, 4, ... <= n)
    n: int = 16
    # another n for a kind of question, "kind=n,…" (the ceiling's "final=32": its guessable final questions need
    # no large-k numbers, its steps questions keep eval.n); a kind not named takes eval.n
    n_by_kind: str = ""
    # sampling temperature of the evaluated (clean) policy
    temperature: float = 1.0
    # completion length cap in evaluation; a truncated completion counts as wrong
    max_new_tokens: int = 512
    # held-out problems (0 = all)
    problems: int = 0
    # evaluate during training every this many steps (0 = off; a run this long also logs step 0)
    every: int = 0
    # rows per sampling call in evaluation (0 = rollout.batch_size); at >= 2·n several problems share a
    # call, each with its own generator (large batches sample much faster on a CPU)
    batch_size: int = 0

    def __post_init__(self):
        checks.eval_config(self)

    def kind_n(self) -> dict[str, int]:
        """eval.n_by_kind as {kind: n}; a malformed one is an error naming the form."""
        out = {}
        for item in filter(None, (x.strip() for x in self.n_by_kind.split(","))):
            kind, sep, n = item.partition("=")
            checks.check(bool(sep) and kind.strip() != "" and n.strip().isdigit(),
                         f"eval.n_by_kind expects kind=n,… (e.g. final=32), got {self.n_by_kind!r}")
            out[kind.strip()] = int(n)
        return out

    def n_for(self, record: dict) -> int:
        """Samples for this problem: its kind's n, else eval.n."""
        return self.kind_n().get(record.get("kind"), self.n)


@dataclass(frozen=True)
class RunConfig:
    # training steps, a batch each (a step takes grpo.epochs × grpo.mini_batches optimizer steps)
    steps: int = 200
    # seed of the data order, the noise draws, sampling and the adapter's initialisation
    seed: int = 0
    # run folder (metrics.jsonl, samples.jsonl, config.json, checkpoints, adapter)
    out: str = "runs/latest"
    # checkpoint every this many steps (and always at the end)
    save_every: int = 25
    # steps whose adapter is kept for good in RUN/adapters/step-N (a checkpoint is overwritten by the next), e.g.
    # "20,40": what compare's frontier evaluates
    keep_adapters: str = ""
    # CPU threads for torch (0 = torch's default); tiny matrices run faster on one
    threads: int = 0
    # where metrics go: jsonl (metrics.jsonl, always on), tensorboard (RUN/tensorboard), wandb; comma-separated
    log_to: tuple[str, ...] = ("jsonl",)
    # completions per step written to samples.jsonl, spread over the step's prompts (0 = off)
    log_samples: int = 4

    def __post_init__(self):
        checks.run_config(self)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):  # checks across sections
        checks.config(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
