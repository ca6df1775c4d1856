"""GPU memory per role of rlcore's algorithms, and the fewest GPUs each role needs, from closed-form byte counts.

    python -m launch.bench_memory [--params 7e9] [--gpu-gib 80] [--seq-len 2048] [--rollout-batch 256]
                                  [--micro-batch 8] [--zero-stage 3] [--learner-gpus 1]

Without --params it prints one table per model size: 0.5B, 7B and 70B. Nothing is run or loaded.

The measured per-role model copies of rlcore's topologies (`models_held` in launch/bench.py, one copy
per replica, reported in launch/bench_report/report.md; GRPO and RRHF's 1-model mode are read off
`build_topology()` in algorithms/ppo.py and algorithms/rrhf.py):

    PPO (GAE)           learner (policy, trainable), critic (policy backbone + value head, trainable),
                        reference (frozen policy), reward (frozen reward model), rollout (vLLM engine:
                        frozen policy + KV cache)
    GRPO                PPO without the critic (a critic-free advantage builds none)
    RRHF, 2-model       learner, reward (frozen reward model), rollout
    RRHF, 1-model       learner; rollout only to evaluate (responses and scores come from the data file,
                        so no reward model)
    Self-rewarding DPO  learner, rollout: one engine writes the prompts, answers and judges them, and gives
                        the reference log-probs, so there is no reference copy

The bench's tiny runs score with a rule (its reward holds 0 copies); here the reward role holds a reward
model the policy's size, as a learned reward model would.

Assumptions (P = parameters; also printed under the tables):
- bf16 weights, 2 bytes/param. A frozen copy (reference, reward, the rollout engine's weights) is 2P bytes.
- A trainable copy under mixed-precision Adam is 16P bytes: bf16 weights 2 + bf16 grads 2 + fp32 master
  weights 4 + Adam m and v 8. ZeRO shards part of it over the role's N data-parallel GPUs: stage 1 the
  optimizer states (12 bytes/param), stage 2 also the grads (14), stage 3 also the weights (16). Per GPU:
  stage 0 16P, stage 1 4P + 12P/N, stage 2 2P + 14P/N, stage 3 16P/N.
- The critic is the policy's size (its value head, hidden_size params, is left out).
- KV cache of a rollout engine: 2 (K and V) x layers x kv_heads x head_dim x 2 bytes x seq_len x
  rollout_batch (every sequence of the batch in flight at once, each at full length), with the architecture
  nearest --params on a log scale: Qwen2.5-0.5B (24 layers, 2 KV heads, head_dim 64), Qwen2.5-7B (28, 4,
  128), Llama-3-70B (80, 8, 128).
- Activations are left out (they grow with micro_batch x seq_len; --micro-batch is echoed, it enters no
  number), and so are CUDA context, NCCL buffers and fragmentation: the usable memory is 90 % of --gpu-gib.
- Min GPUs of a role: the smallest N whose per-GPU share fits the usable memory. For the learner and the
  critic N >= --learner-gpus and the share is the ZeRO one above; a frozen copy or a rollout engine that
  does not fit one GPU is split by tensor parallelism, memory / N (a lower bound: real tensor-parallel
  sizes divide the head count).
- Every role has GPUs of its own (no colocation) and one replica; an algorithm's total is the sum over roles.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GIB = 2**30
USABLE_FRACTION = 0.9
FROZEN_BYTES = 2
"""Per parameter: bf16 weights."""
TRAINABLE_BYTES = 16
"""Per parameter: bf16 weights 2 + bf16 grads 2 + fp32 master weights 4 + Adam m and v 8."""
SHARDED_BYTES = {0: 0, 1: 12, 2: 14, 3: 16}
"""Per parameter, by ZeRO stage: the part of TRAINABLE_BYTES split over the data-parallel GPUs."""
MAX_GPUS = 4096
"""min_gpus gives up (None: does not fit) beyond this."""
DEFAULT_SIZES = (0.5e9, 7e9, 70e9)

TRAINABLE, FROZEN, ENGINE = "trainable", "frozen", "engine"


@dataclass(frozen=True)
class Arch:
    """The shape that sets the KV cache's size."""

    name: str
    params: float
    layers: int
    kv_heads: int
    head_dim: int


ARCHS = (Arch("Qwen2.5-0.5B", 0.5e9, 24, 2, 64), Arch("Qwen2.5-7B", 7e9, 28, 4, 128),
         Arch("Llama-3-70B", 70e9, 80, 8, 128))


@dataclass(frozen=True)
class Settings:
    """The command line's knobs; every field is its flag."""

    gpu_gib: float = 80.0
    seq_len: int = 2048
    rollout_batch: int = 256
    """Sequences a rollout engine holds in its KV cache at once."""
    micro_batch: int = 8
    """Echoed only: it would size the activations, which are left out."""
    zero_stage: int = 3
    learner_gpus: int = 1
    """Data-parallel GPUs the learner and critic start from (they take more if their share does not fit)."""

    @property
    def usable_bytes(self) -> float:
        return USABLE_FRACTION * self.gpu_gib * GIB


@dataclass(frozen=True)
class Role:
    """One actor group of a topology and the model copy it holds."""

    name: str
    kind: str
    """trainable, frozen or engine (frozen weights + KV cache)."""
    holds: str


LEARNER = Role("learner", TRAINABLE, "policy, trainable")
CRITIC = Role("critic", TRAINABLE, "policy backbone + value head, trainable")
REFERENCE = Role("reference", FROZEN, "policy, frozen")
REWARD = Role("reward", FROZEN, "reward model, frozen")
ROLLOUT = Role("rollout", ENGINE, "vLLM: policy, frozen + KV cache")

ALGORITHMS = {
    "PPO": (LEARNER, CRITIC, REFERENCE, REWARD, ROLLOUT),
    "GRPO": (LEARNER, REFERENCE, REWARD, ROLLOUT),
    "RRHF (2-model)": (LEARNER, REWARD, ROLLOUT),
    "RRHF (1-model)": (LEARNER, Role("rollout", ENGINE, "vLLM: policy, frozen + KV cache; evaluation only")),
    "Self-rewarding DPO": (LEARNER, Role("rollout", ENGINE, "vLLM: policy, frozen + KV cache; writes, answers, "
                                                            "judges, reference log-probs")),
}
"""Roles of each algorithm; every role holds one model copy."""


def nearest_arch(params: float) -> Arch:
    """The representative architecture closest to `params` on a log scale."""
    return min(ARCHS, key=lambda arch: abs(math.log(params / arch.params)))


def trainable_bytes(params: float, zero_stage: int, gpus: int) -> float:
    """Per GPU: the unsharded bytes on every GPU plus the sharded ones split over `gpus`."""
    sharded = SHARDED_BYTES[zero_stage]
    return (TRAINABLE_BYTES - sharded) * params + sharded * params / gpus


def frozen_bytes(params: float, gpus: int = 1) -> float:
    """Per GPU: bf16 weights, split over `gpus` by tensor parallelism."""
    return FROZEN_BYTES * params / gpus


def kv_cache_bytes(arch: Arch, seq_len: int, sequences: int) -> int:
    """K and V, per layer and KV head, bf16, for every token of every sequence."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * 2 * seq_len * sequences


def role_bytes(kind: str, params: float, settings: Settings, gpus: int = 1) -> float:
    """Per GPU, for a role of `kind` spread over `gpus`."""
    if kind == TRAINABLE:
        return trainable_bytes(params, settings.zero_stage, gpus)
    if kind == FROZEN:
        return frozen_bytes(params, gpus)
    kv_cache = kv_cache_bytes(nearest_arch(params), settings.seq_len, settings.rollout_batch)
    return (frozen_bytes(params) + kv_cache) / gpus


def min_gpus(kind: str, params: float, settings: Settings) -> int | None:
    """The smallest GPU count whose per-GPU share fits the usable memory; None if none does (e.g. ZeRO-0)."""
    start = settings.learner_gpus if kind == TRAINABLE else 1
    for gpus in range(start, MAX_GPUS + 1):
        if role_bytes(kind, params, settings, gpus) <= settings.usable_bytes:
            return gpus
    return None


def total_gpus(algorithm: str, params: float, settings: Settings) -> int | None:
    """Sum over the algorithm's roles; None if some role fits no GPU count."""
    counts = [min_gpus(role.kind, params, settings) for role in ALGORITHMS[algorithm]]
    return None if None in counts else sum(counts)


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:,.1f}"


def table(params: float, settings: Settings) -> str:
    """Markdown: per role of every algorithm, then per algorithm (copies, total GPUs, ratio to PPO)."""
    arch = nearest_arch(params)
    heading = (f"## {params / 1e9:g}B parameters (KV cache shaped like {arch.name}: {arch.layers} layers, "
               f"{arch.kv_heads} KV heads, head_dim {arch.head_dim})")
    lines = [heading, "", "| Algorithm | Role | Holds | GiB (1 GPU) | Min GPUs | GiB/GPU at min |",
             "|---|---|---|---|---|---|"]
    for algorithm, roles in ALGORITHMS.items():
        for role in roles:
            gpus = min_gpus(role.kind, params, settings)
            per_gpu = "-" if gpus is None else gib(role_bytes(role.kind, params, settings, gpus))
            lines.append(f"| {algorithm} | {role.name} | {role.holds} | {gib(role_bytes(role.kind, params, settings))} "
                         f"| {'does not fit' if gpus is None else gpus} | {per_gpu} |")
    ppo = total_gpus("PPO", params, settings)
    lines += ["", "| Algorithm | Model copies | Total GPUs | GPUs / PPO's |", "|---|---|---|---|"]
    for algorithm, roles in ALGORITHMS.items():
        total = total_gpus(algorithm, params, settings)
        ratio = "-" if total is None or ppo is None else f"{total / ppo:.2f}"
        lines.append(f"| {algorithm} | {len(roles)} | {'-' if total is None else total} | {ratio} |")
    return "\n".join(lines)


def assumptions(settings: Settings) -> list[str]:
    """The module docstring's assumptions, with this run's numbers."""
    return [
        ("- bf16 weights, 2 bytes/param; a frozen copy (reference, reward, rollout weights) is 2P bytes; the reward "
         "model and the critic are the policy's size."),
        ("- Trainable (mixed-precision Adam) 16P bytes: bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m, v 8; "
         "ZeRO shards part of it over the N data-parallel GPUs, per GPU: stage 0 16P, 1 4P + 12P/N, 2 2P + 14P/N, "
         f"3 16P/N (here ZeRO-{settings.zero_stage})."),
        (f"- KV cache: 2 x layers x kv_heads x head_dim x 2 bytes x seq_len {settings.seq_len} x rollout batch "
         f"{settings.rollout_batch} (all in flight at once)."),
        (f"- Left out: activations (micro-batch {settings.micro_batch} x seq_len per learner GPU), CUDA context, NCCL "
         "buffers, fragmentation."),
        (f"- Usable: 90 % of {settings.gpu_gib:g} GiB = {gib(settings.usable_bytes)} GiB per GPU. Min GPUs: smallest "
         f"N whose share fits (learner, critic: N >= {settings.learner_gpus}, ZeRO share; frozen and rollout: tensor "
         "parallel, memory / N, a lower bound)."),
        "- Each role on GPUs of its own, one replica; total = sum over roles.",
    ]


def report(sizes: tuple[float, ...], settings: Settings) -> str:
    """Title, one table per model size, the assumptions."""
    title = (f"# GPU memory per role: {settings.gpu_gib:g} GiB GPUs, ZeRO-{settings.zero_stage}, "
             f"seq_len {settings.seq_len}, rollout batch {settings.rollout_batch}")
    return "\n\n".join([title] + [table(params, settings) for params in sizes]
                       + ["Assumptions (P = parameters):\n" + "\n".join(assumptions(settings))])


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=positive, help="model parameters, e.g. 7e9 (default: 0.5e9, 7e9 and 70e9)")
    parser.add_argument("--gpu-gib", type=positive, default=80.0, help="memory of one GPU, GiB (90 %% is usable)")
    parser.add_argument("--seq-len", type=int, default=2048, help="prompt + response tokens per sequence")
    parser.add_argument("--rollout-batch", type=int, default=256, help="sequences in a rollout engine's KV cache")
    parser.add_argument("--micro-batch", type=int, default=8, help="echoed only: activations are left out")
    parser.add_argument("--zero-stage", type=int, default=3, choices=[0, 1, 2, 3], help="ZeRO stage of learner, critic")
    parser.add_argument("--learner-gpus", type=int, default=1, help="fewest data-parallel GPUs of learner and critic")
    args = parser.parse_args(argv)
    if min(args.seq_len, args.rollout_batch, args.micro_batch, args.learner_gpus) < 1:
        parser.error("--seq-len, --rollout-batch, --micro-batch and --learner-gpus must be >= 1")
    settings = Settings(args.gpu_gib, args.seq_len, args.rollout_batch, args.micro_batch, args.zero_stage,
                        args.learner_gpus)
    print(report((args.params,) if args.params else DEFAULT_SIZES, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
