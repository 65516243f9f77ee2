"""Reward model (InstructGPT App. C.2).

Paper: a single 6B RM for every policy size; one epoch; lr 9e-6, cosine to 10%; 64 prompts per
batch, each with all C(K,2) comparisons of its K = 4..9 ranked completions as one element.
"""
from rlhf_jax import config_lib

MINI_LR = 1e-4  # mini-world RMs start from a tiny SFT model; 9e-6 barely moves them.


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  # The paper's RM is 6B whatever the policy size.
  rm_geometry = '6b' if geometry in config_lib.PAPER_GEOMETRIES else geometry
  c = config_lib.base_config(rm_geometry)
  c.stage = 'rm'
  c.mesh = config_lib.mesh_for(rm_geometry)
  c.data = config_lib.data_config(c.model.geometry)
  lr = 9e-6 if geometry in config_lib.PAPER_GEOMETRIES else MINI_LR
  c.optimizer = config_lib.optimizer_config(lr, schedule='cosine', final_lr_frac=0.1)
  c.batch_size = 64  # prompts
  c.k_max = 9
  c.epochs = 1
  c.init_from = 'sft'
  return c
