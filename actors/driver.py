"""Driver-side calls every algorithm makes on its actor groups: fan prompts out, score greedy answers, sync weights,
export the policy, read what each role has spent."""

from __future__ import annotations

import torch

from actors.learner import LearnerWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.core import checkpoint
from rlcore.core.batch import Batch
from rlcore.runtime.group import ActorGroup, gather


def generate(rollout_workers: ActorGroup[RolloutWorker], prompts: list[str], sampling: Sampling) -> Batch:
    """Fan prompts out over the rollout workers in contiguous chunks; group ids are global prompt indices."""
    chunks = [c.tolist() for c in torch.arange(len(prompts)).tensor_split(len(rollout_workers)) if len(c)]
    refs = [
        actor.generate.remote([prompts[i] for i in chunk], sampling, chunk)
        for actor, chunk in zip(rollout_workers.actors, chunks)
    ]
    batch = Batch.cat(gather(refs))
    skipped = len(prompts) - len(set(batch.group.tolist()))
    if skipped:
        print(f"warning: {skipped} of {len(prompts)} prompts skipped: longer than the model's context allows")
    return batch


def greedy_accuracy(rollout_workers: ActorGroup[RolloutWorker], task, prompts: list[str], max_new_tokens: int) -> float:
    """Share of `prompts` whose greedy answer the task's verifier accepts."""
    batch = generate(rollout_workers, prompts, Sampling.greedy(max_new_tokens))
    return sum(task.verify(p, r) for p, r in zip(batch.info["prompt"], batch.info["response"])) / len(prompts)


def push_weights(learner: ActorGroup[LearnerWorker], *receivers: ActorGroup) -> None:
    """Learner rank 0's weights go into the object store once; every receiver (rollout workers, a self-judging
    reward worker, ...) loads them in place with its `update_weights`."""
    update = learner.map(LearnerWorker.weights)[0]
    refs = []
    for group in receivers:
        refs += group.map(group.actor_cls.update_weights, update)
    gather(refs)


def export_policy(learner: ActorGroup[LearnerWorker], run_dir, step: int | None = None) -> str:
    """The learner's policy as a Hugging Face folder: <run_dir>/final, or checkpoint `step`'s `hf` folder
    (`rlcore.core.checkpoint.model_dir`). Every rank takes part (ZeRO-3 gathers); returns the folder."""
    return gather(learner.map(LearnerWorker.export, str(checkpoint.model_dir(run_dir, step))))[0]


def usage_metrics(groups: dict[str, ActorGroup]) -> dict[str, float]:
    """What each role has spent so far, measured inside its replicas (`rlcore.core.usage`), as metrics:

        usage/<role>/busy_s, busy_cpu_s,      sums over the role's replicas (rlcore.core.usage.snapshot)
                     cpu_s, calls
        usage/<role>/peak_rss_mb, gpu_peak_mb  the largest replica's
        usage/<role>/replicas
        usage/<role>/tokens_generated          response tokens its `generate` calls returned
        usage/<role>/tokens_trained            response tokens its `train_step` calls took
        usage/busy_s, usage/busy_cpu_s        busy actor-seconds (wall, CPU) of all roles together

    `groups` names the roles: {"rollout": topology.rollout_workers, "learner": topology.learner, ...};
    empty groups are left out.
    """
    snapshots = {role: group.usage() for role, group in groups.items() if len(group)}
    metrics: dict[str, float] = {}
    for role, replicas in snapshots.items():
        prefix = f"usage/{role}/"
        for key in ("busy_s", "busy_cpu_s", "cpu_s", "calls"):
            metrics[prefix + key] = sum(s[key] for s in replicas)
        for key in ("peak_rss_mb", "gpu_peak_mb"):
            metrics[prefix + key] = max(s[key] for s in replicas)
        metrics[prefix + "replicas"] = len(replicas)
        metrics[prefix + "tokens_generated"] = sum(s["methods"].get("generate", {}).get("tokens_out", 0)
                                                   for s in replicas)
        metrics[prefix + "tokens_trained"] = sum(s["methods"].get("train_step", {}).get("tokens_in", 0)
                                                 for s in replicas)
    metrics["usage/busy_s"] = sum(metrics[f"usage/{role}/busy_s"] for role in snapshots)
    metrics["usage/busy_cpu_s"] = sum(metrics[f"usage/{role}/busy_cpu_s"] for role in snapshots)
    return metrics
