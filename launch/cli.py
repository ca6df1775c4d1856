"""The `rlcore` command.

    rlcore train CONFIG.yaml [key.sub=value ...]   run the algorithm the file names (`algorithm: ppo`)
    rlcore sft [CONFIG.yaml] [key=value ...]       supervised warm start on a task
    rlcore build NAME ...                          build tiny:<task> / sft:<task> models into the cache
    rlcore submit CONFIG.yaml [key=value ...]      run `rlcore train` as a Ray job on a cluster
    rlcore train-rm / train-themis / themis-eval   reward models (see launch/reward_cmds.py)
    rlcore bench [CONFIG.yaml]                     compare the algorithms' compute cost
    rlcore export RUN_DIR [--step N] [--out DIR]   the Hugging Face folder a run exported (final, or checkpoint N)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from algorithms import ALGORITHMS, algorithm_module
from launch import bench, reward_cmds, submit, themis_eval
from rlcore.core import checkpoint
from rlcore.core.config import ConfigError, config_from_args, config_help, load_config, read_yaml
from rlcore.models import sft
from rlcore.models.build import build_model


def cmd_train(args: list[str]) -> dict:
    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    if path is None:
        raise ConfigError("rlcore train needs a config file: rlcore train CONFIG.yaml [key=value ...]")
    try:
        module = algorithm_module(read_yaml(path).get("algorithm"), where=path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return module.train(load_config(module.Config, path, overrides, ignore=("algorithm",)))


def cmd_sft(args: list[str]) -> dict:
    return sft.train(config_from_args(sft.Config, args))


def cmd_build(args: list[str]) -> dict:
    """`rlcore build NAME ...`: build `tiny:<task>` / `sft:<task>` models into the cache (once)."""
    if not args:
        raise ConfigError("rlcore build needs model names: rlcore build sft:arithmetic [tiny:calendar ...]")
    return {name: build_model(name) for name in args}


def cmd_export(args: list[str]) -> dict:
    """`rlcore export RUN_DIR [--step N] [--out DIR]`: the Hugging Face folder (safetensors, config, tokenizer,
    generation config; a LoRA run's adapter under adapter/) that a run wrote at its end, <RUN_DIR>/final, or
    with --step N at its checkpoint N (PPO), <RUN_DIR>/checkpoints/step_N/hf. Every run writes these itself;
    this command finds one (and copies it to DIR with --out), it converts no DeepSpeed shards. Load it with
    `AutoModelForCausalLM.from_pretrained(FOLDER)` or `vllm serve FOLDER`."""
    parser = argparse.ArgumentParser(prog="rlcore export", usage="rlcore export RUN_DIR [--step N] [--out DIR]")
    parser.add_argument("run_dir")
    parser.add_argument("--step", type=int)
    parser.add_argument("--out")
    ns = parser.parse_args(args)
    folder = checkpoint.exported_model(ns.run_dir, ns.step)
    if ns.out:
        folder = shutil.copytree(folder, ns.out)
    return {"model_path": str(folder)}


COMMANDS = {
    "train": cmd_train,
    "sft": cmd_sft,
    "build": cmd_build,
    "submit": submit.cmd_submit,  # run `rlcore train` as a Ray job on a cluster
    "train-rm": reward_cmds.cmd_train_rm,
    "train-themis": reward_cmds.cmd_train_themis,
    "themis-eval": themis_eval.cmd_themis_eval,
    "bench": bench.cmd_bench,  # the algorithms' compute cost
    "export": cmd_export,  # a run's trained model as a Hugging Face folder
}
CONFIGS = {
    "sft": lambda: sft.Config,
    "bench": lambda: bench.BenchConfig,
    "train-rm": lambda: reward_cmds.reward_model.RMConfig,
    "train-themis": lambda: reward_cmds.themis.ThemisConfig,
    "themis-eval": lambda: themis_eval.ThemisConfig,
}
"""Command -> its config dataclass, for `--help`."""
DOCSTRING_HELP = {"build": cmd_build, "export": cmd_export}
"""Commands without a config: `--help` prints the function's docstring."""


def command_help(command: str, args: list[str]) -> str:
    """`rlcore COMMAND [CONFIG.yaml | ALGORITHM] --help`: every config field with type, default and docstring."""
    usage = f"rlcore {command} [CONFIG.yaml] [key.sub=value ...]\n\nconfig fields (defaults; a YAML file and "
    usage += "dotted overrides change them):\n"
    if command in CONFIGS:
        return usage + config_help(CONFIGS[command]())
    names = [a for a in args if not a.startswith("-") and "=" not in a]
    if not names:
        return (f"rlcore train CONFIG.yaml [key.sub=value ...]\n\nThe file's `algorithm:` key picks one of "
                f"{sorted(ALGORITHMS)}; `rlcore train ALGORITHM --help` or `rlcore train CONFIG.yaml --help` lists "
                "that algorithm's config fields.")
    name = names[0] if names[0] in ALGORITHMS else read_yaml(names[0]).get("algorithm")
    try:
        module = algorithm_module(name, where=names[0])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return f"algorithm {name}: " + usage + config_help(module.Config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlcore", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="config file and key=value overrides")
    ns = parser.parse_args(argv)
    try:
        if ns.command != "submit" and {"-h", "--help"} & set(ns.args):
            print(command_help(ns.command, ns.args) if ns.command not in DOCSTRING_HELP
                  else DOCSTRING_HELP[ns.command].__doc__)
            return 0
        result = COMMANDS[ns.command](ns.args)
    except ConfigError as err:
        print(f"rlcore {ns.command}: config error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"rlcore {ns.command}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
