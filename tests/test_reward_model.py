"""Scalar-head reward models (rlcore.rewards.reward_model): data, splits, scoring and that training learns."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from launch.cli import main
from rlcore.rewards.reward_model import (
    RMConfig,
    is_tara_file,
    load_pairs,
    pairwise_accuracy,
    split_rows,
    train_reward_model,
)

TARA = Path(__file__).resolve().parents[1] / "data" / "tara"


def test_split_rows_is_seeded_disjoint_and_complete():
    rows = list(range(50))
    train, heldout = split_rows(rows, 0.2, seed=3)
    assert len(heldout) == 10 and sorted(train + heldout) == rows
    assert split_rows(rows, 0.2, seed=3) == (train, heldout)
    assert split_rows(rows, 0.2, seed=4) != (train, heldout)
    assert split_rows(rows, 0.0, seed=3)[1] == []


def test_pairs_from_a_task_a_preferences_file_and_a_tara_file(tmp_path):
    train, heldout = load_pairs(RMConfig(data="task:arithmetic", train_size=30, heldout_size=10))
    assert len(train) == 30 and len(heldout) == 10
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    assert all(p["chosen"] != p["rejected"] for p in train)

    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad", "extra": i}) + "\n"
                            for i in range(10)))
    assert not is_tara_file(path)
    train, heldout = load_pairs(RMConfig(data=str(path), heldout_fraction=0.3))
    assert (len(train), len(heldout)) == (7, 3) and set(train[0]) == {"prompt", "chosen", "rejected"}

    calendar = TARA / "calendar_train.jsonl"
    assert is_tara_file(calendar)
    train, heldout = load_pairs(RMConfig(data=str(calendar)))
    assert (len(train), len(heldout)) == (256, 64)
    assert train[0]["chosen"] != train[0]["rejected"] and "?" in train[0]["prompt"] + heldout[0]["prompt"]


def test_pairwise_accuracy_counts_ties_as_half():
    assert pairwise_accuracy(torch.tensor([2.0, 1.0, 0.0, 5.0]), torch.tensor([1.0, 1.0, 3.0, 4.0])) == 0.625


def test_tiny_reward_model_learns_arithmetic_preferences(tmp_path):
    """From the SFT warm start (which half-knows arithmetic), the pairwise loss teaches the scalar head to
    prefer the right answer to a near miss on held-out prompts: clearly above chance (0.5)."""
    config = RMConfig(model="sft:arithmetic", steps=200, batch_size=64, lr=1e-3, heldout_size=300, eval_every=200,
                      output_dir=str(tmp_path / "rm"))
    result = train_reward_model(config)
    assert result.heldout_accuracy >= 0.6, result  # 300 pairs: chance is 0.5 ± 0.03
    assert result.heldout_accuracy > result.heldout_accuracy_before + 0.05
    assert (tmp_path / "rm" / "rlcore_rm.json").exists()


def test_train_rm_command(tmp_path):
    out = tmp_path / "rm"
    assert main(["train-rm", "launch/configs/rm_arithmetic.yaml", "steps=2", "batch_size=4", "train_size=16",
                 "heldout_size=8", f"output_dir={out}"]) == 0
    assert (out / "config.json").exists() and (out / "rlcore_rm.json").exists()
    assert main(["train-rm", "stepz=2"]) == 2  # a config error names the key
