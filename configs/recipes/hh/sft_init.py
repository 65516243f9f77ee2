"""HH-RLHF recipe, stage sft_init (see recipe.py in this folder)."""
from rlhf_jax import config_lib

recipe = config_lib.sibling_config(__file__, 'recipe')


def get_config(arg=None):
  return recipe.recipe('sft_init', arg)
