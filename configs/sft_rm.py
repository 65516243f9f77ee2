"""The reward model's initialisation: its base model fine-tuned on the demonstrations (§3.5:
"we start from the 6B SFT model"), as configs/sft.py does for the policy but at the RM geometry.

Selected by validation loss: the RM-score selection of the policy's SFT needs the reward model
this stage initialises.

Usage: python -m rlhf_jax.main --config=configs/sft_rm.py[:geometry] --workdir=DIR
"""
from rlhf_jax import config_lib

sft = config_lib.sibling_config(__file__, 'sft')

# The mini RM's SFT: 4 epochs instead of 16 (a 'tiny-rm' step costs ~3.5x a tiny one); the RM
# needs a trunk that reads the task, not a polished generator.
MINI_EPOCHS = 4


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  c = sft.get_config(config_lib.reward_geometry(geometry))
  c.stage = 'sft_rm'
  c.pipeline_geometry = geometry  # the policy's: dependencies are loaded at it
  c.workdir = config_lib.default_workdir(geometry)
  c.init_from = 'pretrain_rm'
  c.select_by = 'valid_loss'
  if geometry not in config_lib.PAPER_GEOMETRIES:
    c.epochs = MINI_EPOCHS
  return c
