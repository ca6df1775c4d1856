"""The `rlcore` command (cli), its configs, benchmarks and cluster job submission. May import everything; nothing
imports `launch`."""
