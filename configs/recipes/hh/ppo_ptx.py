"""HH-RLHF recipe, stage ppo_ptx (see recipe.py in this folder)."""
from rlhf_jax import config_lib

recipe = config_lib.sibling_config(__file__, 'recipe')


def get_config(arg=None):
  return recipe.recipe('ppo_ptx', arg)
