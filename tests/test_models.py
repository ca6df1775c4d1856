"""Tiny offline models: built from a config, saved as ordinary model folders, loaded by transformers."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlcore.core.batch import Batch, make_batch
from rlcore.models.loading import (
    encode_prompts,
    load_model,
    load_tokenizer,
    resolve_model,
    response_logits,
    response_values,
    token_logprobs,
)
from rlcore.models.tiny import TinyModelSpec, build_tiny_model


def test_tiny_model_is_an_ordinary_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RLCORE_CACHE", str(tmp_path))
    path = build_tiny_model(TinyModelSpec(task="arithmetic", num_layers=2, hidden_size=64, num_heads=2))
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.config.num_hidden_layers == 2
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<pad>", "<bos>", "<eos>"}
    # deterministic by seed, cached: a second build returns the same folder and weights
    assert build_tiny_model(TinyModelSpec(task="arithmetic", num_layers=2, hidden_size=64, num_heads=2)) == path
    again = build_tiny_model(TinyModelSpec(task="arithmetic", num_layers=2, hidden_size=64, num_heads=2), force=True)
    reloaded = AutoModelForCausalLM.from_pretrained(again)
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)


def test_tokenizer_round_trip_and_chat_template():
    tokenizer = load_tokenizer("tiny:arithmetic")
    for text in ["12+7=19", "3-98=-95", "7*8+1=57"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.tokenize("123") == ["1", "2", "3"]  # digits stay single tokens
    [ids] = encode_prompts(tokenizer, ["12+7="])
    assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids[1:]) == "12+7="
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}],
                                         tokenize=False)
    assert chat == "<bos>1+1=2<eos>"
    assert resolve_model("/some/real/path") == "/some/real/path"
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_heads_and_logprobs_follow_left_padding():
    tokenizer = load_tokenizer("tiny:arithmetic")
    model = load_model("tiny:arithmetic").eval()
    prompts = encode_prompts(tokenizer, ["1+1=", "12+34-5="])
    responses = [tokenizer("2", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
                 tokenizer("41", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    batch = make_batch(prompts, responses, tokenizer.pad_token_id)
    with torch.no_grad():
        logps = token_logprobs(response_logits(model, batch), batch)
        # each row alone (no padding) gives the same logprobs: positions follow the attention mask
        for i in range(2):
            alone = make_batch([prompts[i]], [responses[i]], tokenizer.pad_token_id)
            single = token_logprobs(response_logits(model, alone), alone)
            n = len(responses[i])
            assert torch.allclose(logps[i, :n], single[0, :n], atol=1e-5)
        assert logps[0, 2] == 0  # padding position
        values = response_values(load_model("tiny:arithmetic", head="value"), batch)
        rewards = load_model("tiny:arithmetic", head="reward")(input_ids=batch.input_ids,
                                                              attention_mask=batch.attention_mask).logits
    assert values.shape == batch.response_mask.shape and values[0, 2] == 0
    value_model = load_model("tiny:arithmetic", head="value").train()
    assert torch.equal(response_values(value_model, batch), response_values(value_model, batch))  # no dropout
    assert rewards.shape == (2, 1)


def test_chunked_token_logprobs_equal_log_softmax_with_gradients():
    """`token_logprobs` works on a few positions at a time (here 3 of 7: chunks of 3, 3, 1) and equals the
    plain log_softmax(logits.float()) gathered at the targets: values and gradients, fp32 and bf16 logits.
    Log-probs (fp32 in both) agree to fp32 rounding (~1e-7 relative); gradients too in fp32, and in bf16 to
    bf16 rounding (each gradient element is cast to bf16 once in both)."""
    generator = torch.Generator().manual_seed(0)
    rows, prompt, response, vocab = 4, 2, 7, 50
    input_ids = torch.randint(0, vocab, (rows, prompt + response), generator=generator)
    response_mask = (torch.arange(response) < torch.tensor([[7], [5], [1], [3]])).float()  # [B, R]
    batch = Batch(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), response_mask=response_mask,
                  group=torch.arange(rows))
    weights = torch.randn(rows, response, generator=generator)  # an arbitrary loss: Σ w · log p
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):  # bf16: an ulp near 1 is 8e-3
        base = (torch.randn(rows, response + 1, vocab, generator=generator) * 4).to(dtype)  # sliced as the model's
        results = []
        for chunked in (True, False):
            full = base.clone().requires_grad_()
            logits = full[:, 1:]  # a strided view, as `response_logits` returns
            if chunked:
                logps = token_logprobs(logits, batch, chunk_elements=3 * rows * vocab)
            else:
                targets = input_ids[:, prompt:]
                logps = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1) * response_mask
            (weights * logps).sum().backward()
            results.append((logps.detach(), full.grad))
        (chunked_logps, chunked_grad), (plain_logps, plain_grad) = results
        assert chunked_logps.dtype == torch.float32 and chunked_grad.dtype == dtype
        torch.testing.assert_close(chunked_logps, plain_logps, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(chunked_grad.float(), plain_grad.float(), atol=tolerance, rtol=1e-6)
        assert chunked_logps[2, 1:].abs().sum() == 0  # padding positions
