"""Config loading: every wrong key, type or choice fails at once and names the key."""

import pytest

from launch.cli import main
from rlcore.core.config import ConfigError, LearnerConfig, RolloutConfig, from_dict, load_config, parse_overrides
from rlcore.models.sft import SFTConfig


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 10\nlr: 1.0e-3\n")
    config = load_config(SFTConfig, path, ["batch_size=32", "task=calendar"])
    assert (config.max_steps, config.lr, config.batch_size, config.task) == (10, 1e-3, 32, "calendar")


def test_nested_dotted_overrides():
    assert parse_overrides(["rollout.num_workers=4", "rollout.resources.rollout=1", "name=x"]) == {
        "rollout": {"num_workers": 4, "resources": {"rollout": 1}},
        "name": "x",
    }


@pytest.mark.parametrize(
    "cls, data, message",
    [
        (RolloutConfig, {"num_wrkers": 2}, "unknown key 'num_wrkers'; allowed keys here: ['num_workers'"),
        (RolloutConfig, {"engine": "sglang"}, "engine: 'sglang' is not allowed; choose one of ['vllm', 'transformers']"),
        (RolloutConfig, {"num_workers": "two"}, "num_workers: expected int, got 'two'"),
        (RolloutConfig, {"temperature": -1.0}, "temperature: -1.0 is outside the allowed range"),
        (RolloutConfig, {"top_p": 1.5}, "top_p: 1.5 is outside the allowed range [0, 1]"),
        (RolloutConfig, {"resources": {"rollout": "x"}}, "resources.rollout: expected float, got 'x'"),
        (LearnerConfig, {"zero_stage": 5}, "zero_stage: 5 is not allowed; choose one of [0, 1, 2, 3]"),
        (LearnerConfig, {"betas": 0.9}, "betas: expected a list"),
    ],
)
def test_bad_values_name_the_key(cls, data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data)
    assert message in str(err.value)


def test_nested_prefix_in_messages():
    from dataclasses import dataclass, field

    @dataclass
    class Outer:
        rollout: RolloutConfig = field(default_factory=RolloutConfig)

    with pytest.raises(ConfigError, match=r"^rollout\.n_samples: 0 is outside"):
        from_dict(Outer, {"rollout": {"n_samples": 0}})
    with pytest.raises(ConfigError, match=r"unknown key 'rollout\.nope'"):
        from_dict(Outer, {"rollout": {"nope": 1}})


def test_int_accepted_for_float_but_not_bool_for_int():
    assert from_dict(LearnerConfig, {"lr": 1}).lr == 1.0
    assert load_config(LearnerConfig, None, ["lr=4e-4"]).lr == 4e-4  # YAML reads 4e-4 as a string
    with pytest.raises(ConfigError, match="lr: expected float, got 'fast'"):
        load_config(LearnerConfig, None, ["lr=fast"])
    with pytest.raises(ConfigError, match="micro_batch_size: expected int"):
        from_dict(LearnerConfig, {"micro_batch_size": True})


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: sft\nmax_stepz: 3\n")
    assert main(["train", str(path)]) == 2
    assert "unknown key 'max_stepz'" in capsys.readouterr().err
    path.write_text("algorithm: nope\n")
    assert main(["train", str(path)]) == 2
    assert "'algorithm' is 'nope'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert main(["sft", "badoverride"]) == 2


def test_an_override_of_a_nested_config_keeps_the_defaults_its_parent_gives_it():
    """PPO's critic defaults to lr 5e-4 (CriticConfig's own default is 1e-4) and RRHF's policy to sft:arithmetic:
    overriding another key of the same section must keep them."""
    from algorithms import ppo, rrhf

    ppo_config = load_config(ppo.Config, None, ["critic.num_workers=2"])
    assert ppo_config.critic.lr == 5e-4 and ppo_config.critic.num_workers == 2
    assert ppo.Config().model.path == "sft:arithmetic"
    assert load_config(ppo.Config, None, ["model.lora_rank=4"]).model.path == "sft:arithmetic"
    rrhf_config = load_config(rrhf.Config, "launch/configs/rrhf_tiny.yaml", ["model.lora_rank=4"], ignore=("algorithm",))
    assert rrhf_config.model.path == rrhf.Config().model.path and rrhf_config.model.lora_rank == 4


def test_every_shipped_config_loads_with_its_algorithm():
    """launch/configs/*.yaml that name an algorithm load with its Config; the GPU config names a real model and
    a real dataset and its reward rule reads GSM8K's answers."""
    from pathlib import Path

    from algorithms import algorithm_module
    from rlcore.core.config import read_yaml
    from rlcore.rewards.reference import reference_match

    loaded = {}
    for path in sorted(Path("launch/configs").glob("*.yaml")):
        raw = read_yaml(path)
        if raw.get("algorithm"):  # RRHF 1-model names its rankings file at run time (the bench writes one)
            needs = ["data_path=rankings.jsonl"] if raw.get("sources") == ["data"] else []
            loaded[path.stem] = load_config(algorithm_module(raw["algorithm"]).Config, path, needs,
                                            ignore=("algorithm",))
    assert {"ppo_tiny", "ppo_file_tiny", "ppo_gsm8k_gpu", "rrhf_tiny", "rrhf_rankings_tiny", "self_rewarding_tiny",
            "self_rewarding_arithmetic_tiny"} <= set(loaded)
    gpu = loaded["ppo_gsm8k_gpu"]
    assert gpu.model.path == "Qwen/Qwen2.5-0.5B-Instruct" and gpu.data.train == "openai/gsm8k"
    rule = {"extract": gpu.reward.extract, "answer_extract": gpu.reward.answer_extract, "match": gpu.reward.match}
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert reference_match("She sold 48 + 24 = 72 clips in total, so the answer is 72.", answer, **rule)
    assert not reference_match("The answer is 24.", answer, **rule)
    assert loaded["ppo_file_tiny"].reward.kind == "reference"
