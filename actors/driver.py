"""Driver-side calls every algorithm makes on its actor groups: fan prompts out, evaluate greedy answers, sync
weights, read what each role has spent."""

from __future__ import annotations

import ray
import torch

from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, Sampling
from rlcore.core import usage
from rlcore.core.batch import Batch
from rlcore.core.config import DataConfig, RewardConfig, RolloutConfig
from rlcore.data.sources import Data, load_data, prompt_text
from rlcore.models.loading import encode_prompts, load_tokenizer, response_logprobs
from rlcore.rewards.reference import reference_match
from rlcore.runtime.group import ActorGroup, gather


def generate(rollout_workers: ActorGroup[RolloutWorker], prompts: list, sampling: Sampling,
             answers: list[str] | None = None) -> Batch:
    """Fan prompts out over the rollout workers in contiguous chunks; group ids are global prompt indices.
    With `answers` (one per prompt), each row carries its prompt's reference answer in info["answer"]."""
    return Generation(rollout_workers, prompts, sampling, answers).result()


class Generation:
    """A generation in flight (`generate` without the wait): the rollout workers start at once, `result()`
    waits for the batch. Calls to the same workers made later (a weight update) queue behind it."""

    def __init__(self, rollout_workers: ActorGroup[RolloutWorker], prompts: list, sampling: Sampling,
                 answers: list[str] | None = None) -> None:
        chunks = [c.tolist() for c in torch.arange(len(prompts)).tensor_split(len(rollout_workers)) if len(c)]
        self.refs = [actor.generate.remote([prompts[i] for i in chunk], sampling, chunk)
                     for actor, chunk in zip(rollout_workers.actors, chunks)]
        self.num_prompts, self.answers = len(prompts), answers

    def result(self) -> Batch:
        batch = Batch.cat(gather(self.refs))
        skipped = self.num_prompts - len(set(batch.group.tolist()))
        if skipped:
            print(f"warning: {skipped} of {self.num_prompts} prompts skipped: longer than the model's context allows")
        if self.answers is not None:
            batch.info["answer"] = [self.answers[g] for g in batch.group.tolist()]
        return batch


def greedy_accuracy(rollout_workers: ActorGroup[RolloutWorker], task, prompts: list[str], max_new_tokens: int) -> float:
    """Share of `prompts` whose greedy answer the task's verifier accepts."""
    batch = generate(rollout_workers, prompts, Sampling.greedy(max_new_tokens))
    return sum(task.verify(p, r) for p, r in zip(batch.info["prompt"], batch.info["response"])) / len(prompts)


def evaluate(rollout_workers: ActorGroup[RolloutWorker], reward_workers: ActorGroup[RewardWorker], data: Data,
             reward: RewardConfig, max_new_tokens: int, samples: int = 0,
             prefix: str = "heldout") -> tuple[dict[str, float], list[dict]]:
    """Greedy answers to the evaluation rows: their accuracy where a reference exists (the task's verifier,
    else `reward`'s extraction and match against the row's answer), their mean reward when there are reward
    workers, and the first `samples` generations (prompt, response, reward, answer, correct).

    Metrics: <prefix>_accuracy, <prefix>_reward. A prompt longer than the context counts as wrong."""
    batch = generate(rollout_workers, data.prompts, Sampling.greedy(max_new_tokens), data.answers)
    prompts, responses = [prompt_text(p) for p in batch.info["prompt"]], batch.info["response"]
    metrics, correct, rewards = {}, None, None
    if data.task is not None:
        correct = [data.task.verify(p, r) for p, r in zip(prompts, responses)]
    elif data.answers is not None:
        correct = [float(reference_match(r, a, reward.extract, reward.answer_extract, reward.match))
                   for r, a in zip(responses, batch.info["answer"])]
    if correct is not None:
        metrics[f"{prefix}_accuracy"] = sum(correct) / len(data.rows)
    if len(reward_workers):
        rewards = torch.cat([s.rewards for s in gather(reward_workers.shard(RewardWorker.score, batch))]).tolist()
        metrics[f"{prefix}_reward"] = sum(rewards) / len(rewards)
    rows = [{"prompt": prompts[i], "response": responses[i],
             "reward": None if rewards is None else rewards[i],
             "answer": batch.info["answer"][i] if "answer" in batch.info else None,
             "correct": None if correct is None else correct[i]} for i in range(min(samples, len(batch)))]
    return metrics, rows


def load_train_eval(data: DataConfig, model: str, size: int) -> tuple[Data, Data]:
    """(train, eval) data of a `data` section: `size` rows of a task (files give all theirs); prompts longer than
    data.max_prompt_tokens once formatted with `model`'s tokenizer are dropped and counted."""
    tokenizer = load_tokenizer(model)

    def prompt_tokens(prompt) -> int:
        return len(encode_prompts(tokenizer, [prompt], data.apply_chat_template)[0])

    loaded = load_data(data, "train", size, prompt_tokens), load_data(data, "eval", None, prompt_tokens)
    for name, part in zip(("train", "eval"), loaded):
        if any(part.skipped.values()):
            print(f"data.{name} {part.source}: {len(part.rows)} rows kept; dropped {part.skipped}")
    return loaded


def before_after(result: dict) -> str:
    """ "held-out accuracy 52.3% -> 68.8%, reward 0.52 -> 0.69" from a result's *_before / *_after keys."""
    parts = []
    for key, fmt in (("heldout_accuracy", "{:.1%}"), ("heldout_reward", "{:.3f}")):
        if f"{key}_before" in result and f"{key}_after" in result:
            parts.append(f"{key.replace('heldout_', 'held-out ')} {fmt.format(result[key + '_before'])} -> "
                         f"{fmt.format(result[key + '_after'])}")
    return ", ".join(parts) or "no evaluation"


def recomputes_logprobs(rollout: RolloutConfig, dtype: str) -> bool:
    """Whether the losses take the learner's log-probs of the sampled tokens rather than the engine's
    (`rollout.recompute_logprobs`; auto: below float32 precision)."""
    if rollout.recompute_logprobs == "auto":
        return dtype != "float32"
    return rollout.recompute_logprobs == "always"


def learner_logprobs(learner: ActorGroup[LearnerWorker], batch: Batch) -> torch.Tensor:
    """The learner's log π of each response token of `batch` (one forward pass, rows shared over its ranks):
    [B, R], zero on padding."""
    return torch.cat(gather(learner.shard(LearnerWorker.forward, batch, response_logprobs)))


def push_weights(learner: ActorGroup[LearnerWorker], *receivers: ActorGroup) -> int:
    """Learner rank 0's weights go into the object store once; every receiver (rollout workers, a self-judging
    reward worker, ...) loads them in place with its `update_weights`. Returns the version pushed."""
    update = learner.map(LearnerWorker.weights)[0]
    version = learner.map(LearnerWorker.steps_taken)[0]
    refs = []
    for group in receivers:
        refs += group.map(group.actor_cls.update_weights, update)
    return gather([version, *refs])[0]


def policy_servers(rollout_workers: ActorGroup[RolloutWorker], reward_workers: ActorGroup[RewardWorker],
                   reward: RewardConfig) -> list[ActorGroup]:
    """The groups that serve the policy's current weights: the rollout engines, and the reward workers when
    they judge with the policy itself (reward.kind self_judge)."""
    return [rollout_workers] + ([reward_workers] if reward.kind == "self_judge" and len(reward_workers) else [])


class WeightSync:
    """Keeps the groups that serve the policy (rollout engines, a self-judging reward engine) on the learner's
    weights, and remembers the versions pushed, so that the driver can check which weights generated a batch
    (`staleness`).

    Two transports (`rollout.weight_sync`):
        collective    learner rank 0 and every engine's workers form one weight-update group (actors/vllm_ext.py:
                      NCCL on GPU, gloo on CPU) and each push streams the weights tensor by tensor, with no copy
                      of the model on either side. Used when every receiver runs a vLLM engine.
        object_store  rank 0's weights go into the object store once and every receiver loads them
                      (`push_weights`): the fallback.
    A push first asks each receiver which group it is in. The question queues behind any call in flight (a
    generation), so the broadcast starts only when every receiver is ready for it; and an engine that Ray
    restarted is in no group, so the group is formed anew and the engine gets the current weights before it
    serves again.
    """

    def __init__(self, learner: ActorGroup[LearnerWorker], *receivers: ActorGroup,
                 transport: str = "collective") -> None:
        self.learner, self.groups = learner, receivers
        self.receivers = [actor for group in receivers for actor in group.actors]
        self.pushed = [0]
        """Versions pushed so far (learner optimizer steps; 0: the starting weights every engine loads)."""
        self.sizes = gather([actor.weight_group_size.remote() for actor in self.receivers])
        """Ranks each receiver takes in the group (its engine's workers; 0: it cannot join one)."""
        self.collective = transport == "collective" and bool(self.sizes) and all(self.sizes)
        self.port: int | None = None
        """The weight-update group's port (None: not formed yet)."""
        self.metadata: list | None = None

    def connect(self) -> None:
        """Form the weight-update group: learner rank 0, then each receiver's workers (a new port each time)."""
        address, port = self.learner.endpoint()
        world_size = 1 + sum(self.sizes)
        refs = self.learner.map(LearnerWorker.join_weight_group, address, port, world_size)
        offsets = [1 + sum(self.sizes[:i]) for i in range(len(self.sizes))]
        refs += [actor.init_weight_group.remote(address, port, offset, world_size)
                 for actor, offset in zip(self.receivers, offsets)]
        gather(refs)
        self.metadata = gather(self.learner.map(LearnerWorker.weight_metadata))[0]
        self.port = port

    def __call__(self) -> None:
        if not self.collective:
            self.pushed.append(push_weights(self.learner, *self.groups))
            return
        ports = gather([actor.weight_group_port.remote() for actor in self.receivers])
        if self.port is None or any(port != self.port for port in ports):
            self.connect()
        version = gather(self.learner.map(LearnerWorker.steps_taken))[0]
        refs = [actor.receive_weights.remote(self.metadata, version) for actor in self.receivers]
        try:
            gather(refs + self.learner.map(LearnerWorker.broadcast_weights))
        except ray.exceptions.RayTaskError as err:
            # A receiver that dies mid-broadcast closes the collective under the learner as well ("connection
            # closed by peer"): raise the death itself, which `with_retries` answers with a restart and a new group.
            try:
                ray.get(refs, timeout=60)
            except ray.exceptions.RayActorError:
                raise
            except Exception:
                pass
            raise err
        self.pushed.append(version)

    @property
    def version(self) -> int:
        return self.pushed[-1]

    def staleness(self, batch: Batch) -> int:
        """Pushes since the oldest weights that generated `batch` (0: it came from the weights last pushed)."""
        oldest = min(batch.info["version"])
        return sum(version > oldest for version in set(self.pushed))


def usage_metrics(groups: dict[str, ActorGroup]) -> dict[str, float]:
    """What each role has spent so far, measured inside its replicas (`rlcore.core.usage`), as metrics:

        usage/<role>/busy_s, busy_cpu_s,      sums over the role's replicas (rlcore.core.usage.snapshot)
                     cpu_s, calls
        usage/<role>/peak_rss_mb, gpu_peak_mb  the largest replica's
        usage/<role>/replicas
        usage/<role>/tokens_generated          response tokens its `generate` calls returned
        usage/<role>/tokens_trained            response tokens its `train_step` calls took
        usage/busy_s, usage/busy_cpu_s        busy actor-seconds (wall, CPU) of all roles together
        usage/learner_rollout_overlap          share of the learner's busy time a rollout worker was busy too

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
    if "learner" in snapshots and "rollout" in snapshots:  # how much generation overlapped training
        metrics["usage/learner_rollout_overlap"] = usage.overlap_share(
            [i for s in snapshots["learner"] for i in s["intervals"]],
            [i for s in snapshots["rollout"] for i in s["intervals"]])
    metrics["usage/busy_s"] = sum(metrics[f"usage/{role}/busy_s"] for role in snapshots)
    metrics["usage/busy_cpu_s"] = sum(metrics[f"usage/{role}/busy_cpu_s"] for role in snapshots)
    return metrics
