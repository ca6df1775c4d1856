"""rlcore: the parts every algorithm shares. Imports nothing of `actors`, `algorithms` or `launch`.

Sub-packages, bottom to top (each imports only those listed before it):

    core/      contracts: config, Batch, losses (pure), weights, checkpoint, tracking, usage, training helper
    data/      where prompts and preferences come from: data sources and the built-in tasks
    models/    models by name: the cache, tiny models, loading, SFT, the explicit build step
    rewards/   reward modelling: scalar RM, Themis, LLM-as-a-Judge parsing, TARA data, tools and the sandbox
    runtime/   Ray: start-up, ActorGroup, retries, rendezvous of learner ranks (imports core only)
"""
