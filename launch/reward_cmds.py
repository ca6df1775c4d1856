"""Reward-model commands of the `rlcore` CLI.

    rlcore train-rm [CONFIG.yaml] [key=value ...]       scalar-head RM on preference pairs (rlcore.rewards.reward_model)
    rlcore train-themis [CONFIG.yaml] [key=value ...]   tool-augmented RM on TARA rows (rlcore.rewards.themis);
                                                        use_tools=false trains the plain baseline instead

Each takes an optional YAML file (only what differs from the defaults) and dotted
overrides, like `rlcore train`; the result is a dict the CLI prints as JSON.
"""

from __future__ import annotations

from rlcore.core.config import config_from_args
from rlcore.rewards import reward_model
from rlcore.rewards.themis import training as themis


def cmd_train_rm(args: list[str]) -> dict:
    return reward_model.train(config_from_args(reward_model.RMConfig, args))


def cmd_train_themis(args: list[str]) -> dict:
    return themis.train(config_from_args(themis.ThemisConfig, args))
