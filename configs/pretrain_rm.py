"""The reward model's own base model: plain LM training on the world's corpus at the RM geometry.

The paper's RM starts from a 6B GPT-3 fine-tuned on the demonstrations (§3.5) whatever the
policy size; in the mini world the RM geometry is `config_lib.reward_geometry` of the pipeline's
('tiny-rm' for tiny, see configs/rm.py). Paper geometries import a pretrained 6B instead
(`--config.init_from=hf:DIR` in sft_rm), as real runs do for the policy.

Usage: python -m rlhf_jax.main --config=configs/pretrain_rm.py[:geometry] --workdir=DIR
"""
from rlhf_jax import config_lib

pretrain = config_lib.sibling_config(__file__, 'pretrain')

# 'tiny-rm' sees half the policy's pretraining tokens (300 steps of 32 x 128, ~1.7 passes over the
# corpus): a step costs ~3.5x a tiny one, and the main job has to stay within 15 minutes.
MINI_STEPS = 300


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  c = pretrain.get_config(config_lib.reward_geometry(geometry))
  c.stage = 'pretrain_rm'
  c.pipeline_geometry = geometry  # the policy's: dependencies are loaded at it
  c.workdir = config_lib.default_workdir(geometry)
  if geometry not in config_lib.PAPER_GEOMETRIES:
    c.total_steps = MINI_STEPS
  return c
