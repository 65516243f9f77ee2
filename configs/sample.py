"""Completions for reward-model comparisons (InstructGPT section 3.5, data loop of section 3.4).

Paper: labelers ranked K = 4..9 outputs per prompt, sampled from several models (the pretrained
base, SFT, RL policies). Here K is drawn per prompt from [k_min, k_max] and the K slots are split
over `policies` (stage names or checkpoint folders, comma-separated; a PPO stage gives its kept
EMA policy, as the paper's later comparisons came from RL policies), sampled at temperature 1.

Usage: python -m rlhf_jax.main --config=configs/sample.py --workdir=DIR
"""
from rlhf_jax import config_lib

# Mini-world presets rank 512 training prompts (about a third of the RM split at world scale
# 0.05) so that sampling and the RM epoch stay around a minute each on a 2-core CPU.
MINI_MAX_PROMPTS = 512
# The world's RM validation split (~890 prompts at scale 0.05) is cut to this many: enough for
# accuracies within about +-0.01 (thousands of pairs), at half the sampling time.
MINI_MAX_VALID_PROMPTS = 256


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  c = config_lib.base_config(geometry)
  c.stage = 'sample'
  c.mesh = config_lib.mesh_for(geometry)
  c.data = config_lib.data_config(geometry)
  c.policies = 'pretrain,sft'
  c.k_min, c.k_max = 4, 9
  c.temperature = 1.0
  c.batch_size = 64  # sequences per sampling batch
  # Training and validation prompts sampled (0 = all).
  c.max_prompts = 0 if geometry in config_lib.PAPER_GEOMETRIES else MINI_MAX_PROMPTS
  c.max_valid_prompts = 0 if geometry in config_lib.PAPER_GEOMETRIES else MINI_MAX_VALID_PROMPTS
  # The test prompts too, for the RM's final accuracy by held-out labelers (never for a choice).
  c.sample_test = True
  return c
