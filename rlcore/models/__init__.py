"""Models by name: `cache` (where built models live, keyed by settings and build code), `tiny` (tiny Qwen2
models built offline), `loading` (names to models and tokenizers; token log-probs and values), `sft` (the
supervised warm start), `build` (the explicit step that builds `tiny:` / `sft:` models) and `export` (a
trained policy as a Hugging Face folder). Imports `rlcore.core` and `rlcore.data`."""
