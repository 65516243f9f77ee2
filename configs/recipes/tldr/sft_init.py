"""Recipe tldr, stage sft_init (see configs/recipes/recipe.py)."""
import pathlib

from rlhf_jax import config_lib

recipe = config_lib.sibling_config(str(pathlib.Path(__file__).parent), 'recipe')


def get_config(arg=None):
  return recipe.recipe('sft_init', arg, 'tldr')
