"""Driver-side calls every algorithm makes on its actor groups: fan prompts out, score greedy answers, sync weights."""

from __future__ import annotations

import torch

from actors.learner import LearnerWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.batch import Batch
from rlcore.distributed import ActorGroup, gather


def generate(rollout_workers: ActorGroup[RolloutWorker], prompts: list[str], sampling: Sampling) -> Batch:
    """Fan prompts out over the rollout workers in contiguous chunks; group ids are global prompt indices."""
    chunks = [c.tolist() for c in torch.arange(len(prompts)).tensor_split(len(rollout_workers)) if len(c)]
    refs = [
        actor.generate.remote([prompts[i] for i in chunk], sampling, chunk)
        for actor, chunk in zip(rollout_workers.actors, chunks)
    ]
    return Batch.cat(gather(refs))


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
