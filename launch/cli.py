"""The `rlcore` command.

    rlcore train CONFIG.yaml [key.sub=value ...]   run the algorithm the file names (`algorithm: ppo`)
    rlcore sft [CONFIG.yaml] [key=value ...]       supervised warm start on a task
    rlcore submit CONFIG.yaml [key=value ...]      run `rlcore train` as a Ray job on a cluster
    rlcore train-rm / train-themis / themis-eval   reward models (see launch/reward_cmds.py)
    rlcore bench [CONFIG.yaml]                     compare the algorithms' compute cost
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from rlcore.config import ConfigError, load_config, read_yaml

# algorithm name -> module with a `Config` dataclass and `train(config) -> dict`
ALGORITHMS = {
    "sft": "rlcore.sft",
    "self_rewarding": "algorithms.self_rewarding",
    "ppo": "algorithms.ppo",
    "rrhf": "algorithms.rrhf",
}


def _split_config_arg(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is a YAML file unless it is an override (contains '=')."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def cmd_train(args: list[str]) -> dict:
    path, overrides = _split_config_arg(args)
    if path is None:
        raise ConfigError("rlcore train needs a config file: rlcore train CONFIG.yaml [key=value ...]")
    algorithm = read_yaml(path).get("algorithm")
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"{path}: 'algorithm' is {algorithm!r}; choose one of {sorted(ALGORITHMS)}")
    module = importlib.import_module(ALGORITHMS[algorithm])
    config = load_config(module.Config, path, overrides, ignore=("algorithm",))
    return module.train(config)


def cmd_sft(args: list[str]) -> dict:
    from rlcore import sft

    path, overrides = _split_config_arg(args)
    return sft.train(load_config(sft.Config, path, overrides, ignore=("algorithm",)))


COMMANDS = {"train": cmd_train, "sft": cmd_sft}
COMMANDS["submit"] = lambda args: importlib.import_module("launch.submit").cmd_submit(args)  # run as a Ray job
# reward models (launch/reward_cmds.py): train-rm, train-themis, themis-eval
COMMANDS["train-rm"] = lambda args: importlib.import_module("launch.reward_cmds").cmd_train_rm(args)
COMMANDS["train-themis"] = lambda args: importlib.import_module("launch.reward_cmds").cmd_train_themis(args)
COMMANDS["themis-eval"] = lambda args: importlib.import_module("launch.reward_cmds").cmd_themis_eval(args)
COMMANDS["bench"] = lambda args: importlib.import_module("launch.bench").cmd_bench(args)  # algorithms' compute cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlcore", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="config file and key=value overrides")
    ns = parser.parse_args(argv)
    try:
        result = COMMANDS[ns.command](ns.args)
    except ConfigError as err:
        print(f"rlcore {ns.command}: config error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
