"""The InstructGPT-mini world: datasets and tokenizer written to <workdir>/data.

Usage: python -m rlhf_jax.main --config=configs/world.py --workdir=runs/mini
"""
from rlhf_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config(config_lib.geometry_arg(arg))
  c.stage = 'world'
  c.data = config_lib.data_config(c.model.geometry)
  # Prompt counts are the paper's (SFT 13k, RM 33k, PPO 31k, test 3.2k; Table 6) times this.
  c.data.world_scale = 0.05
  c.data.tokenizer_vocab = c.model.vocab_size
  return c
