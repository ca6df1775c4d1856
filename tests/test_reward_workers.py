"""RewardWorker kinds: model, self_judge, tool (Themis) and remote, behind the one `score(batch)` interface.

Models are tiny and trained only as far as each test needs: the reward model a few
steps (its accuracy is tests/test_reward_model.py's business), the Themis model
made to memorise one crafted trace so that real generation writes a real tool
call. Remote endpoints are http.server instances on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import threading
import time
import typing
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from actors.reward import SCORERS, RemoteRewardError, RemoteScorer, RewardWorker, SelfJudgeScorer, judge_rewards
from algorithms.rrhf import Config, train
from rlcore.core.batch import make_batch
from rlcore.core.config import RewardConfig, load_config
from rlcore.core.tracking import read_metrics
from rlcore.core.weights import WeightUpdate
from rlcore.models.build import build_model
from rlcore.models.loading import load_model, load_tokenizer
from rlcore.models.tiny import build_tiny_lm
from rlcore.rewards.reward_model import RMConfig, right_pad, train_reward_model
from rlcore.rewards.tara import TaraAnswer, ToolCall
from rlcore.rewards.themis.model import ThemisModel, TinyLMSpec
from rlcore.rewards.themis.tool_loop import run_tool_traces
from rlcore.rewards.themis.trace import encode_segments, example_segments
from rlcore.rewards.tools import ToolContext

PROMPTS = ["12+7=", "3-45=", "61+22=", "90-9="]
RESPONSES = ["19", "-42", "83", "18"]


def text_batch(prompts: list[str], responses: list[str]):
    """A Batch whose token ids do not matter: reward workers read the texts in `info`."""
    return make_batch([[1]] * len(prompts), [[1]] * len(prompts), 0,
                      info={"prompt": list(prompts), "response": list(responses)})


def test_every_configured_kind_has_a_scorer():
    assert set(SCORERS) == set(typing.get_args(typing.get_type_hints(RewardConfig)["kind"]))
    with pytest.raises(ValueError, match="task:<name> data source"):
        RewardWorker(RewardConfig(kind="rule"), None)
    with pytest.raises(ValueError, match="reward.path"):
        RewardWorker(RewardConfig(kind="model"), None)
    with pytest.raises(ValueError, match="reward.url"):
        RewardWorker(RewardConfig(kind="remote", url="localhost:1"), None)


# ---------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rm")
    train_reward_model(RMConfig(steps=3, batch_size=8, train_size=64, heldout_size=16, output_dir=str(folder)))
    return folder


def test_reference_reward_matches_the_rows_answers():
    """kind reference: GSM8K-style answers ("... #### 72") against the last number of each response; a row
    without its answer is a clear error, not a zero."""
    worker = RewardWorker(RewardConfig(kind="reference", extract="last_number", answer_extract="hash",
                                       match="numeric"))
    batch = text_batch(["q1", "q2", "q3", "q4"], ["So she sold 72 clips.", "It is 71.", "$1,000.00", "none"])
    batch.info["answer"] = ["48 + 24 = 72\n#### 72", "#### 72", "#### 1000", "#### 5"]
    assert worker.score(batch).rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    del batch.info["answer"]
    with pytest.raises(ValueError, match="data.answer_key"):
        worker.score(batch)


def test_model_scorer_batches_like_single_rows(reward_model_dir):
    worker = RewardWorker(RewardConfig(kind="model", path=str(reward_model_dir)), None)
    scores = worker.score(text_batch(PROMPTS, RESPONSES))
    assert scores.rewards.shape == (4,) and scores.rewards.dtype == torch.float32
    # different lengths share a padded batch: each reward must equal the row scored alone
    singles = torch.cat([worker.score(text_batch([p], [r])).rewards for p, r in zip(PROMPTS, RESPONSES)])
    torch.testing.assert_close(scores.rewards, singles, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- self_judge


@pytest.fixture(scope="module")
def two_policies(tmp_path_factory):
    """The tiny arithmetic model (A) and a copy with perturbed weights (B), and B's weights."""
    path_a = build_model("tiny:arithmetic")
    model = load_model(path_a)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    path_b = tmp_path_factory.mktemp("policy-b")
    model.save_pretrained(path_b)
    load_tokenizer(path_a).save_pretrained(path_b)
    return path_a, str(path_b), {k: v.clone() for k, v in model.state_dict().items()}


def test_judge_rewards_average_the_parsed_samples():
    scores = judge_rewards([" 4", " 5", " x", " 3", "", " 9"], samples=3)
    assert scores.rewards.tolist() == [4.5, 3.0]  # " x" does not parse; " 9" is out of range
    assert judge_rewards([" x", "nothing"], samples=2).rewards.tolist() == [0.0]
    assert scores.traces[0] == " 4\n---\n 5\n---\n x"


def test_self_judge_follows_weight_updates(two_policies):
    """Greedy judgements of A after loading B's weights are exactly those of a judge built on B."""
    path_a, path_b, weights_b = two_policies
    config = RewardConfig(kind="self_judge", judge_samples=1)
    judge_a = SelfJudgeScorer(config, None, path_a, engine="transformers", temperature=0.0)
    judge_b = SelfJudgeScorer(config, None, path_b, engine="transformers", temperature=0.0)
    assert judge_a.template == "{prompt}{response} score:"  # the compact template for a tiny model
    before = judge_a(PROMPTS, RESPONSES).traces
    expected = judge_b(PROMPTS, RESPONSES).traces
    assert before != expected
    judge_a.update_weights(WeightUpdate(weights_b, version=3))
    assert judge_a(PROMPTS, RESPONSES).traces == expected and judge_a.engine.version == 3


def test_self_judge_worker_on_vllm(two_policies):
    """The RewardWorker's default engine (vLLM): samples judge_samples judgements per response, and
    update_weights reaches the engine (greedy outputs then match transformers on B's weights)."""
    path_a, path_b, weights_b = two_policies
    worker = RewardWorker(RewardConfig(kind="self_judge", judge_samples=3), None, path_a)
    try:
        scores = worker.score(text_batch(PROMPTS, RESPONSES))
        assert scores.rewards.shape == (4,) and all(0 <= r <= 5 for r in scores.rewards.tolist())
        assert [trace.count("\n---\n") for trace in scores.traces] == [2] * 4
        worker.update_weights(WeightUpdate(weights_b, version=5))
        assert worker.scorer.engine.version == 5
        worker.scorer.sampling = replace(worker.scorer.sampling, n=1, temperature=0.0)
        on_vllm = worker.score(text_batch(PROMPTS, RESPONSES)).traces
    finally:
        worker.shutdown()
    judge_b = SelfJudgeScorer(RewardConfig(kind="self_judge", judge_samples=1), None, path_b,
                              engine="transformers", temperature=0.0)
    assert on_vllm == judge_b(PROMPTS, RESPONSES).traces


# ---------------------------------------------------------------------- tool (Themis)

CRAFTED_QUESTION = "Which day of the week is 2008-06-16?"
CRAFTED_ANSWER = "2008-06-16 is Monday"


@pytest.fixture(scope="module")
def themis_dir(tmp_path_factory):
    """A tiny Themis model that has memorised one trace with a Calendar.week_day call."""
    from transformers import AutoModelForCausalLM

    call = ToolCall("I need the week day.", "Calendar.week_day", "2008-06-16", "Monday")
    answer = TaraAnswer(CRAFTED_ANSWER, 1.0, (call,), "The tool agrees.")
    segments = example_segments(CRAFTED_QUESTION, answer, use_tools=True)
    folder = tmp_path_factory.mktemp("themis")
    spec = TinyLMSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, vocab_size=300)
    build_tiny_lm(["".join(s.text for s in segments)] * 4, spec, folder / "init")
    tokenizer = load_tokenizer(str(folder / "init"))
    torch.manual_seed(0)
    model = ThemisModel(AutoModelForCausalLM.from_pretrained(folder / "init"))
    ids, kinds = encode_segments(tokenizer, segments, add_eos=True)
    input_ids, attention_mask = right_pad([ids], tokenizer.pad_token_id)
    written = torch.tensor([[k in ("tool", "rationale") for k in kinds[1:]]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(400):  # ~110 steps reach the threshold
        logits, _ = model(input_ids, attention_mask)
        loss = torch.nn.functional.cross_entropy(logits[0, :-1][written[0]], input_ids[0, 1:][written[0]])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    model.save(folder / "rm", tokenizer)
    shutil.rmtree(folder / "init")
    return folder / "rm"


class MarkerWeekDay:
    """Stands in for Calendar.week_day and answers something the model never saw."""

    name = "Calendar.week_day"

    def __init__(self):
        self.inputs = []

    def run(self, action_input, context=None):
        self.inputs.append(action_input)
        return "MARKER-42"


def test_tool_scorer_interleaves_a_real_tool_call(themis_dir):
    """The model writes its action and stops at "Observation:"; the tool's answer is inserted; it goes on."""
    worker = RewardWorker(RewardConfig(kind="tool", path=str(themis_dir)), None)
    scores = worker.score(text_batch([CRAFTED_QUESTION], [CRAFTED_ANSWER]))
    assert scores.rewards.shape == (1,)
    assert ("Action: Calendar.week_day\nAction Input: 2008-06-16\nObservation: Monday\nRationale:"
            in scores.traces[0])  # the real Calendar tool ran
    marker = MarkerWeekDay()
    worker.scorer.tools = {marker.name: marker}
    [trace] = worker.score(text_batch([CRAFTED_QUESTION], [CRAFTED_ANSWER])).traces
    assert marker.inputs == ["2008-06-16"]
    assert "Action Input: 2008-06-16\nObservation: MARKER-42\n" in trace and "Observation: Monday" not in trace


def test_tool_scorer_turns_a_malformed_action_into_an_observation(themis_dir):
    """A model output with no parsable action (here: a question the model never saw, with no tool it knows)
    becomes an "Error:" observation; nothing raises and every answer gets a finite reward."""
    tokenizer = load_tokenizer(str(themis_dir))
    malformed = ("Thought: let me see\nAction Input: 2008-06-16\nObservation: (made up)", False)
    outputs = iter([[malformed], [("Rationale: cannot tell", True)]])
    [trace] = run_tool_traces(["Question: q\nAnswer: a\n"], lambda prefixes, stop: next(outputs), tokenizer,
                              [ToolContext()])
    assert [s.text for s in trace.segments if s.kind == "observation"] == [
        " Error: no 'Action:' line followed by an 'Action Input:' line was found\n"]
    worker = RewardWorker(RewardConfig(kind="tool", path=str(themis_dir)), None)
    worker.scorer.max_new_tokens = 24
    scores = worker.score(text_batch(["What is 1+1?", "", CRAFTED_QUESTION], ["2", "", "Tuesday"]))
    assert scores.rewards.shape == (3,) and torch.isfinite(scores.rewards).all()
    assert isinstance(ThemisModel.load(themis_dir), ThemisModel)


# ---------------------------------------------------------------------- remote


class RewardHandler(BaseHTTPRequestHandler):
    """reward = len(response); the server's `mode` makes it fail, hang or answer garbage."""

    def do_POST(self):
        server = self.server
        server.requests += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if server.mode == "hang":
            server.release.wait(30)
            return
        if server.mode == "flaky" and server.requests == 1:
            self.send_error(503, "warming up")
            return
        if server.mode == "bad_request":
            self.send_error(400, "no")
            return
        rewards = [float(len(r)) for r in body["responses"]]
        payload = {"rewards": rewards[:-1] if server.mode == "short" else rewards}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def reward_server():
    servers = []

    def start(mode: str = "ok") -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), RewardHandler)
        server.mode, server.requests, server.release = mode, 0, threading.Event()
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/reward"

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def remote(url: str, timeout_s: float = 2.0, attempts: int = 3) -> RemoteScorer:
    return RemoteScorer(RewardConfig(kind="remote", url=url, timeout_s=timeout_s), None, "",
                        attempts=attempts, backoff_s=0.05)


def test_remote_reward_through_the_worker(reward_server):
    server, url = reward_server("ok")
    worker = RewardWorker(RewardConfig(kind="remote", url=url), None)
    assert worker.score(text_batch(PROMPTS, RESPONSES)).rewards.tolist() == [2.0, 3.0, 2.0, 2.0]


def test_remote_retries_a_server_error(reward_server):
    server, url = reward_server("flaky")
    assert remote(url)(PROMPTS, RESPONSES).rewards.tolist() == [2.0, 3.0, 2.0, 2.0]
    assert server.requests == 2


def test_remote_down_fails_clearly_and_fast():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.time()
    with pytest.raises(RemoteRewardError, match=rf"127.0.0.1:{port}/reward is down or not answering: 3 attempts"):
        remote(f"http://127.0.0.1:{port}/reward")(PROMPTS, RESPONSES)
    assert time.time() - start < 2


def test_remote_hanging_server_takes_bounded_time(reward_server):
    server, url = reward_server("hang")
    start = time.time()
    with pytest.raises(RemoteRewardError, match="2 attempts .0.3 s timeout each. failed; last: .*timed out"):
        remote(url, timeout_s=0.3, attempts=2)(PROMPTS, RESPONSES)
    assert time.time() - start < 0.3 * 2 + 0.05 + 1.5
    assert server.requests == 2


@pytest.mark.parametrize("mode, message", [("short", "expected a list of 4 numbers"),
                                           ("bad_request", "refused the request: HTTP 400")])
def test_remote_bad_answers_are_not_retried(reward_server, mode, message):
    server, url = reward_server(mode)
    with pytest.raises(RemoteRewardError, match=message):
        remote(url)(PROMPTS, RESPONSES)
    assert server.requests == 1


def test_rrhf_runs_with_the_tool_reward_by_config_change_only(themis_dir, tmp_path):
    """RRHF's tiny config with `reward.kind=tool reward.path=<Themis model>` on the calendar task: the Themis
    worker writes its tool calls for every sampled response and its rewards drive the ranking."""
    import ray

    config = load_config(Config, "launch/configs/rrhf_tiny.yaml", [
        "reward.kind=tool", f"reward.path={themis_dir}", "data.train=task:calendar", "model.path=tiny:calendar",
        "rounds=1", "prompts_per_round=4", "data.eval_size=8", f"tracking.run_dir={tmp_path}",
        "tracking.wandb=false"], ignore=("algorithm",))
    try:
        result = train(config)
    finally:
        ray.shutdown()
    rows = [row for row in read_metrics(result["run_dir"]) if "reward" in row]
    assert len(rows) == 1 and math.isfinite(rows[0]["reward"]) and rows[0]["queries"] == 4
    assert result["updates"] >= 1, result


def test_the_self_judge_gets_the_learners_weights(two_policies):
    """PPO and RRHF push the learner's weights to every group that serves the policy (`policy_servers`): with
    reward.kind=self_judge that includes the reward workers, so the judge scores with the learner's weights
    (here B's, while the judge started from A), not with the initial policy."""
    import ray

    from actors.driver import policy_servers, push_weights
    from actors.learner import LearnerWorker
    from actors.rollout import RolloutWorker
    from rlcore.core.config import LearnerConfig, ModelConfig
    from rlcore.runtime.cluster import init_ray
    from rlcore.runtime.group import ActorGroup

    path_a, path_b, _ = two_policies
    config = RewardConfig(kind="self_judge", judge_samples=1, threads=1)
    init_ray()
    try:
        rollouts = ActorGroup(RolloutWorker, 0)
        judges = ActorGroup.from_config(RewardWorker, config, config, None, path_a)
        assert policy_servers(rollouts, judges, RewardConfig(kind="rule")) == [rollouts]
        learner = ActorGroup.from_config(LearnerWorker, LearnerConfig(threads=1), path_b, ModelConfig(path=path_b),
                                         LearnerConfig(threads=1), distributed=True)

        def greedy(worker):
            worker.scorer.sampling = replace(worker.scorer.sampling, temperature=0.0)

        ray.get(judges.actors[0].__ray_call__.remote(greedy))
        batch = text_batch(PROMPTS, RESPONSES)
        before = judges.run(RewardWorker.score, batch)[0].traces
        push_weights(learner, *policy_servers(rollouts, judges, config))
        after = judges.run(RewardWorker.score, batch)[0].traces
        learner.kill()
        judges.kill()
    finally:
        ray.shutdown()
    judge_b = SelfJudgeScorer(RewardConfig(kind="self_judge", judge_samples=1), None, path_b,
                              engine="transformers", temperature=0.0)
    expected = judge_b(PROMPTS, RESPONSES).traces
    assert before != expected and after == expected
