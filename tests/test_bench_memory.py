"""launch/bench_memory.py: closed-form byte counts, worked by hand, and the table `main` prints.

P = 7e9. Trainable (16 bytes/param): ZeRO-0 on 1 GPU 16P = 112e9 B; ZeRO-3 over 8 GPUs 16P/8 = 14e9 B;
ZeRO-1 over 4: 4P + 12P/4 = 7P = 49e9 B; ZeRO-2 over 7: 2P + 14P/7 = 4P = 28e9 B. Frozen: 2P = 14e9 B.
KV cache, Qwen2.5-7B (28 layers, 4 KV heads, head_dim 128), 2048 tokens x 256 sequences:
2·28·4·128·2 = 57,344 B/token; x 524,288 tokens = 30,064,771,072 B = 28 GiB exactly.
"""

import pytest

from launch.bench_memory import (
    ALGORITHMS,
    ARCHS,
    FROZEN,
    GIB,
    TRAINABLE,
    Settings,
    frozen_bytes,
    kv_cache_bytes,
    main,
    min_gpus,
    nearest_arch,
    role_bytes,
    total_gpus,
    trainable_bytes,
)

P = 7e9
QWEN_7B = ARCHS[1]


def test_trainable_bytes_per_gpu_by_zero_stage():
    assert trainable_bytes(P, zero_stage=0, gpus=1) == 16 * 7e9
    assert trainable_bytes(P, zero_stage=0, gpus=8) == 16 * 7e9  # stage 0 shards nothing
    assert trainable_bytes(P, zero_stage=3, gpus=8) == 16 * 7e9 / 8
    assert trainable_bytes(P, zero_stage=1, gpus=4) == pytest.approx(4 * 7e9 + 12 * 7e9 / 4)  # 49e9
    assert trainable_bytes(P, zero_stage=2, gpus=7) == pytest.approx(2 * 7e9 + 14 * 7e9 / 7)  # 28e9


def test_frozen_and_kv_cache_bytes():
    assert frozen_bytes(P) == 2 * 7e9
    assert frozen_bytes(P, gpus=2) == 7e9
    assert QWEN_7B.name == "Qwen2.5-7B" and nearest_arch(P) is QWEN_7B
    assert kv_cache_bytes(QWEN_7B, seq_len=2048, sequences=256) == 2 * 28 * 4 * 128 * 2 * 2048 * 256 == 28 * GIB


def test_nearest_arch_on_a_log_scale():
    """3e9 is 6x the 0.5B and 2.3x under the 7B: the 7B. 20e9: 2.9x over 7B, 3.5x under 70B: the 7B."""
    assert nearest_arch(0.5e9).name == "Qwen2.5-0.5B"
    assert nearest_arch(3e9).name == "Qwen2.5-7B"
    assert nearest_arch(20e9).name == "Qwen2.5-7B"
    assert nearest_arch(70e9).name == "Llama-3-70B"


def test_rollout_engine_holds_frozen_weights_plus_kv_cache():
    """7B: 14e9 B + 28 GiB = 41.04 GiB on one GPU; split over 2 GPUs by tensor parallelism, half each."""
    settings = Settings()
    assert role_bytes("engine", P, settings) == 2 * 7e9 + 28 * GIB
    assert role_bytes("engine", P, settings, gpus=2) == (2 * 7e9 + 28 * GIB) / 2


def test_min_gpus_is_the_smallest_count_that_fits():
    """Usable 0.9 x 80 GiB = 72 GiB = 77.31e9 B.
    ZeRO-3 7B: 112e9 / N <= 77.31e9 -> N = 2 (56e9). ZeRO-1: 28e9 + 84e9 / N <= 77.31e9 -> N = 2 (70e9).
    ZeRO-0: 112e9 on every GPU, never fits. Frozen 7B (14e9) fits one GPU; frozen 70B (140e9) needs 2.
    --learner-gpus 8 starts the learner at 8 even though 2 would do."""
    assert min_gpus(TRAINABLE, P, Settings(zero_stage=3)) == 2
    assert min_gpus(TRAINABLE, P, Settings(zero_stage=1)) == 2
    assert min_gpus(TRAINABLE, P, Settings(zero_stage=0)) is None
    assert min_gpus(FROZEN, P, Settings()) == 1
    assert min_gpus(FROZEN, 70e9, Settings()) == 2
    assert min_gpus(TRAINABLE, P, Settings(zero_stage=3, learner_gpus=8)) == 8
    assert min_gpus(FROZEN, P, Settings(learner_gpus=8)) == 1  # frozen roles don't take the learner's count


def test_model_copies_ppo_grpo_rrhf_self_rewarding():
    copies = {name: len(roles) for name, roles in ALGORITHMS.items()}
    assert copies["PPO"] == 5 and copies["GRPO"] == 4 and copies["RRHF (2-model)"] == 3
    assert copies["PPO"] > copies["GRPO"] > copies["RRHF (2-model)"] > copies["Self-rewarding DPO"] == 2
    assert copies["Self-rewarding DPO"] == min(copies.values())
    assert "critic" not in {role.name for role in ALGORITHMS["GRPO"]}
    assert "reward" not in {role.name for role in ALGORITHMS["RRHF (1-model)"]}
    assert {role.name for role in ALGORITHMS["Self-rewarding DPO"]} == {"learner", "rollout"}


def test_total_gpus_7b_zero3():
    """Learner and critic 2 each, reference and reward 1 each, rollout (41 GiB) 1: PPO 7, GRPO 5, RRHF 4,
    self-rewarding 3. ZeRO-0: the learner fits nowhere, so no total."""
    settings = Settings()
    assert total_gpus("PPO", P, settings) == 2 + 2 + 1 + 1 + 1
    assert total_gpus("GRPO", P, settings) == 2 + 1 + 1 + 1
    assert total_gpus("RRHF (2-model)", P, settings) == 2 + 1 + 1
    assert total_gpus("Self-rewarding DPO", P, settings) == 2 + 1
    assert total_gpus("PPO", P, Settings(zero_stage=0)) is None


def test_main_prints_a_table(capsys):
    assert main(["--params", "7e9"]) == 0
    out = capsys.readouterr().out
    assert "| PPO | learner |" in out and "RRHF" in out and "Self-rewarding" in out
    assert "| GRPO | 4 | 5 | 0.71 |" in out  # 5 / 7 GPUs
    assert "Assumptions" in out and "72.0 GiB" in out


def test_main_rejects_bad_flags():
    with pytest.raises(SystemExit):
        main(["--params", "-1"])
    with pytest.raises(SystemExit):
        main(["--zero-stage", "4"])
