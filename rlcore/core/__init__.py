"""The contracts every other part builds on: config dataclasses and their loader, the one `Batch` type that
crosses every actor boundary, pure losses and estimators, weight updates, checkpoints, tracking, usage
accounting and the single-process training-loop helper. Imports nothing of rlcore outside `core`."""
