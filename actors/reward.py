"""RewardWorker: one interface, `score(batch) -> Scores`, several kinds chosen by `RewardConfig.kind`.

    rule        the task's exact verifier (1.0 right, 0.0 wrong); needs a task:<name> data source
    reference   1.0 iff the response gives the row's reference answer (data.answer_key), after the extraction
                rule reward.extract and the match reward.match (rlcore.rewards.reference), else 0.0
    model       a trained scalar-head reward model (`rlcore train-rm`; reward.path is its folder)
    self_judge  the policy's own weights as an LLM-as-a-Judge (rlcore.rewards.judge), served by a RolloutWorker
                that receives every weight update; reward = mean parsed score of judge_samples samples
    tool        a Themis tool-augmented reward model (`rlcore train-themis`; reward.path): it writes its
                tool calls, the tools run here, it writes a rationale, its value head gives the reward
    remote      an HTTP endpoint: POST {"prompts": [...], "responses": [...]} -> {"rewards": [...]}

Each kind is a small scorer class `(prompts, responses, answers) -> Scores`, built from
`(RewardConfig, task name or None, policy model)`; `SCORERS` maps the config's `kind` to it.
Prompts reach the scorers as text (`rlcore.data.sources.prompt_text`); answers are the rows'
reference answers when the batch carries them (`batch.info["answer"]`), else None. A scorer that serves the policy's own weights
(a self-judge) also has `update_weights`, which the worker forwards.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace

import torch

from actors.rollout import RolloutWorker, Sampling
from rlcore.core.batch import Batch
from rlcore.core.config import RewardConfig, RolloutConfig
from rlcore.core.usage import busy
from rlcore.core.weights import WeightUpdate
from rlcore.data.sources import prompt_text
from rlcore.data.tasks import get_task
from rlcore.models.loading import load_model, load_tokenizer, model_device
from rlcore.models.tiny import TINY_CHAT_TEMPLATE
from rlcore.rewards.judge import COMPACT_JUDGE_TEMPLATE, JUDGE_RUBRIC, average_scores, judge_prompt, parse_score
from rlcore.rewards.reference import reference_match
from rlcore.rewards.reward_model import score_responses
from rlcore.rewards.themis.model import ThemisModel
from rlcore.rewards.themis.tool_loop import score_with_tools
from rlcore.rewards.tools import TOOLS, Tool, ToolContext


@dataclass
class Scores:
    rewards: torch.Tensor
    """One scalar per sample: [B]."""
    traces: list[str] | None = None
    """What the scorer produced on the way (judge text, tool trace), one per sample."""


class RuleScorer:
    """The task's verifier as a reward."""

    def __init__(self, config: RewardConfig, task: str | None, policy_model: str) -> None:
        if task is None:
            raise ValueError("reward.kind 'rule' is a built-in task's verifier and needs a task:<name> data source; "
                             "for your own data with reference answers use reward.kind=reference")
        self.task = get_task(task)

    def __call__(self, prompts: list[str], responses: list[str], answers=None) -> Scores:
        return Scores(torch.tensor([self.task.verify(p, r) for p, r in zip(prompts, responses)]))


class ReferenceScorer:
    """1.0 iff the response gives the row's reference answer (rlcore.rewards.reference), else 0.0."""

    def __init__(self, config: RewardConfig, task: str | None, policy_model: str) -> None:
        self.rule = {"extract": config.extract, "answer_extract": config.answer_extract, "match": config.match}

    def __call__(self, prompts: list[str], responses: list[str], answers: list[str] | None = None) -> Scores:
        if answers is None or any(a is None for a in answers):
            raise ValueError("reward.kind 'reference' needs every row's reference answer: set data.answer_key to "
                             "the column that holds it")
        return Scores(torch.tensor([float(reference_match(r, a, **self.rule)) for r, a in zip(responses, answers)]))


def _set_threads(threads: int) -> None:
    """Torch compute threads: `threads`, or every CPU this process may run on (Ray sets OMP_NUM_THREADS=1)."""
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


class ModelScorer:
    """A trained scalar-head reward model (`rlcore.rewards.reward_model`), scored in batches."""

    def __init__(self, config: RewardConfig, task: str | None, policy_model: str, batch_size: int = 64) -> None:
        if not config.path:
            raise ValueError("reward.path: kind 'model' needs the folder of a trained reward model (rlcore train-rm)")
        _set_threads(config.threads)
        self.tokenizer = load_tokenizer(config.path)
        self.model = load_model(config.path, head="reward").to(model_device()).eval()
        self.batch_size = batch_size

    def __call__(self, prompts: list[str], responses: list[str], answers=None) -> Scores:
        return Scores(score_responses(self.model, self.tokenizer, prompts, responses, self.batch_size))


class SelfJudgeScorer:
    """The policy judging its own samples (Yuan et al. 2024): LLM-as-a-Judge on a rollout engine of its own.

    The engine (a `RolloutWorker`) loads the policy's weights and every `update_weights` after them, so
    the judge is always the current policy. Each response is judged `judge_samples` times (sampled at
    `temperature`); the reward is the mean of the scores that parse, 0.0 when none does. Tiny models
    (the tiny chat template) use the compact template "{prompt}{response} score:", others the
    paper's 5-point rubric.
    """

    def __init__(self, config: RewardConfig, task: str | None, policy_model: str, engine: str = "vllm",
                 temperature: float = 1.0, seed: int = 0, rollout: RolloutConfig | None = None,
                 dtype: str = "float32") -> None:
        """`rollout` and `dtype`: the policy engines' settings (memory share, context, ...), which the judge's
        engine takes too (its own threads and seed)."""
        if not policy_model:
            raise ValueError("reward.kind 'self_judge' needs the policy model (RewardWorker's policy_model)")
        settings = replace(rollout or RolloutConfig(), engine=engine, threads=config.threads, seed=seed)
        self.engine = RolloutWorker(policy_model, settings, dtype=dtype, enable_lora=True)
        compact = self.engine.tokenizer.chat_template == TINY_CHAT_TEMPLATE
        self.template = COMPACT_JUDGE_TEMPLATE if compact else JUDGE_RUBRIC
        self.sampling = Sampling(n=config.judge_samples, temperature=temperature,
                                 max_new_tokens=4 if compact else 256, stop=["\n"] if compact else [])

    def __call__(self, prompts: list[str], responses: list[str], answers=None) -> Scores:
        judge_prompts = [judge_prompt(p, r, self.template) for p, r in zip(prompts, responses)]
        judgements = self.engine.generate(judge_prompts, self.sampling).info["response"]
        return judge_rewards(judgements, self.sampling.n)

    def update_weights(self, update: WeightUpdate) -> None:
        self.engine.update_weights(update)

    def shutdown(self) -> None:
        self.engine.shutdown()


def judge_rewards(judgements: list[str], samples: int) -> Scores:
    """Rewards from `samples` consecutive judgements per response: the mean parsed score, 0.0 if none parses."""
    rewards, traces = [], []
    for start in range(0, len(judgements), samples):
        group = judgements[start : start + samples]
        mean = average_scores([parse_score(text) for text in group])
        rewards.append(0.0 if mean is None else mean)
        traces.append("\n---\n".join(group))
    return Scores(torch.tensor(rewards, dtype=torch.float32), traces)


class ToolScorer:
    """A Themis tool-augmented reward model (`rlcore.rewards.themis`): it writes Thought / Action / Action Input,
    the tool runs here and its Observation is inserted (at most `max_calls` calls; a malformed action,
    unknown tool, failing tool or one slower than reward.timeout_s is an "Error: ..." observation), it
    writes its Rationale, and its value head on the final token is the reward. Traces come back too.

    The question is the task prompt and the answer the response; tools see the response as the answer
    under judgement (ToolContext.answer)."""

    def __init__(self, config: RewardConfig, task: str | None, policy_model: str,
                 tools: dict[str, Tool] | None = None, max_calls: int = 3, max_new_tokens: int = 256) -> None:
        if not config.path:
            raise ValueError("reward.path: kind 'tool' needs the folder of a Themis reward model (rlcore train-themis)")
        _set_threads(config.threads)
        self.model = ThemisModel.load(config.path).to(model_device())
        self.tokenizer = load_tokenizer(config.path)
        self.tools = TOOLS if tools is None else tools
        self.max_calls = max_calls
        self.max_new_tokens = max_new_tokens
        self.timeout_s = config.timeout_s

    def __call__(self, prompts: list[str], responses: list[str], answers=None) -> Scores:
        traces = score_with_tools(self.model, self.tokenizer, prompts, responses,
                                  [ToolContext(answer=r) for r in responses], self.tools, self.max_calls,
                                  self.max_new_tokens, self.timeout_s)
        return Scores(torch.tensor([t.reward for t in traces], dtype=torch.float32), [t.text for t in traces])


class RemoteRewardError(RuntimeError):
    """The remote reward endpoint is down, too slow, or answered something that is not rewards."""


class RemoteScorer:
    """An HTTP reward: POST {"prompts": [...], "responses": [...]} to reward.url, expect {"rewards": [...]}.

    Each attempt waits at most reward.timeout_s for the connection and for each read; a refused
    connection, a timeout, a dropped connection or a 5xx/429 answer is retried `attempts` times in all,
    sleeping backoff_s, 2·backoff_s, ... in between, then raises `RemoteRewardError` naming the URL and
    the last failure. Other HTTP errors and malformed answers raise at once (retrying will not help).
    """

    def __init__(self, config: RewardConfig, task: str | None, policy_model: str, attempts: int = 3,
                 backoff_s: float = 0.5) -> None:
        if not config.url.startswith(("http://", "https://")):
            raise ValueError(f"reward.url: kind 'remote' needs an http(s) URL, got {config.url!r}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.url, self.timeout_s, self.attempts, self.backoff_s = config.url, config.timeout_s, attempts, backoff_s

    def __call__(self, prompts: list[str], responses: list[str], answers=None) -> Scores:
        body = json.dumps({"prompts": list(prompts), "responses": list(responses)}).encode()
        failure = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                if error.code < 500 and error.code != 429:
                    raise RemoteRewardError(f"reward endpoint {self.url} refused the request: HTTP {error.code} "
                                            f"{error.reason}") from error
                failure = f"HTTP {error.code} {error.reason}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
                failure = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            else:
                return Scores(self._rewards(payload, len(prompts)))
        raise RemoteRewardError(f"reward endpoint {self.url} is down or not answering: {self.attempts} attempts "
                                f"({self.timeout_s:g} s timeout each) failed; last: {failure}")

    def _rewards(self, payload: bytes, expected: int) -> torch.Tensor:
        try:
            rewards = json.loads(payload)["rewards"]
        except (ValueError, KeyError, TypeError) as error:
            raise RemoteRewardError(f"reward endpoint {self.url} did not answer {{\"rewards\": [...]}}: "
                                    f"{payload[:200]!r}") from error
        if (not isinstance(rewards, list) or len(rewards) != expected
                or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rewards)):
            raise RemoteRewardError(f"reward endpoint {self.url} answered {str(rewards)[:200]}; expected a list "
                                    f"of {expected} numbers")
        return torch.tensor(rewards, dtype=torch.float32)


MODEL_KINDS = ("model", "self_judge", "tool")
"""Kinds whose scorer runs a model in the reward worker (and so competes for its machine's cores)."""
SCORERS: dict[str, type] = {
    "rule": RuleScorer,
    "reference": ReferenceScorer,
    "model": ModelScorer,
    "self_judge": SelfJudgeScorer,
    "tool": ToolScorer,
    "remote": RemoteScorer,
}


class RewardWorker:
    """Scores samples; reads the prompts, responses and (when there) reference answers from `batch.info`.
    `task`: the data's built-in task (a task:<name> source), or None."""

    def __init__(self, config: RewardConfig, task: str | None = None, policy_model: str = "",
                 rollout: RolloutConfig | None = None, dtype: str = "float32") -> None:
        """`rollout`, `dtype`: the policy engines' settings, for a self-judging scorer's engine."""
        if config.kind not in SCORERS:
            raise ValueError(f"reward.kind {config.kind!r} is not available; choose one of {sorted(SCORERS)}")
        judge = {"rollout": rollout, "dtype": dtype} if config.kind == "self_judge" else {}
        self.scorer = SCORERS[config.kind](config, task, policy_model, **judge)

    @busy
    def score(self, batch: Batch) -> Scores:
        scores = self.scorer([prompt_text(p) for p in batch.info["prompt"]], batch.info["response"],
                             batch.info.get("answer"))
        if scores.rewards.shape != (len(batch),):
            raise RuntimeError(
                f"reward scorer returned {tuple(scores.rewards.shape)} rewards for a batch of {len(batch)}"
            )
        bad = [i for i, r in enumerate(scores.rewards.tolist()) if not math.isfinite(r)]
        if bad:
            raise RuntimeError(f"reward scorer returned non-finite rewards for samples {bad[:10]}")
        return scores

    @busy
    def update_weights(self, update: WeightUpdate) -> None:
        """Forward new policy weights to a scorer that judges with them (no-op for the others)."""
        if hasattr(self.scorer, "update_weights"):
            self.scorer.update_weights(update)

    def weight_group_size(self) -> int:
        """Ranks a self-judging engine takes in the learner's weight-update group (0 for other scorers)."""
        engine = getattr(self.scorer, "engine", None)
        return engine.weight_group_size() if engine is not None else 0

    def init_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        self.scorer.engine.init_weight_group(master_address, master_port, rank_offset, world_size)

    def weight_group_port(self) -> int | None:
        engine = getattr(self.scorer, "engine", None)
        return engine.weight_group_port() if engine is not None else None

    @busy
    def receive_weights(self, names_dtypes_shapes: list, version: int) -> float:
        """A self-judging engine receives the learner's broadcast (see RolloutWorker.receive_weights)."""
        return self.scorer.engine.receive_weights(names_dtypes_shapes, version)

    def shutdown(self) -> None:
        if hasattr(self.scorer, "shutdown"):
            self.scorer.shutdown()
