"""Recipe hh, stage rm (see configs/recipes/recipe.py)."""
import pathlib

from rlhf_jax import config_lib

recipe = config_lib.sibling_config(str(pathlib.Path(__file__).parent), 'recipe')


def get_config(arg=None):
  return recipe.recipe('rm', arg, 'hh')
