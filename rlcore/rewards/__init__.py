"""Reward modelling: `reward_model` (scalar-head RM), `themis` (tool-augmented RM), `judge` (LLM-as-a-Judge
templates, score parsing, judge-quality metrics), `tara` (TARA data and replay) and `tools` (calculator,
calendar, the code sandbox). Imports `rlcore.core`, `rlcore.data` and `rlcore.models`."""
