"""Reward-model commands of the `rlcore` CLI.

    rlcore train-rm [CONFIG.yaml] [key=value ...]       scalar-head RM on preference pairs (rlcore.reward_model)
    rlcore train-themis [CONFIG.yaml] [key=value ...]   tool-augmented RM on TARA rows (rlcore.themis);
                                                        use_tools=false trains the plain baseline instead
    rlcore themis-eval [CONFIG.yaml] [key=value ...]    tools / tools without rationale / plain on the same
                                                        split, held-out accuracies side by side (launch.themis_eval)

Each takes an optional YAML file (only what differs from the defaults) and dotted
overrides, like `rlcore train`; the result is a dict the CLI prints as JSON.
"""

from __future__ import annotations


def _load(config_cls: type, args: list[str]):
    from rlcore.config import load_config

    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    return load_config(config_cls, path, overrides, ignore=("algorithm",))


def cmd_train_rm(args: list[str]) -> dict:
    from rlcore import reward_model

    return reward_model.train(_load(reward_model.RMConfig, args))


def cmd_train_themis(args: list[str]) -> dict:
    from rlcore import themis

    return themis.train(_load(themis.ThemisConfig, args))


def cmd_themis_eval(args: list[str]) -> dict:
    """Like train-themis, plus `variants=tools,no_rationale,plain` (the default: all three)."""
    from launch import themis_eval
    from rlcore.themis import ThemisConfig

    variants = [a.split("=", 1)[1] for a in args if a.startswith("variants=")]
    args = [a for a in args if not a.startswith("variants=")]
    chosen = tuple(variants[-1].split(",")) if variants else tuple(themis_eval.VARIANTS)
    return themis_eval.compare(_load(ThemisConfig, args), chosen)
