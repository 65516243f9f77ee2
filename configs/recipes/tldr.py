"""The recipe on OpenAI's summarize-from-feedback (TL;DR): `tldr.py:stage=STAGE,geometry=NAME`
(configs/recipes/recipe.py)."""
from rlhf_jax import config_lib

recipe = config_lib.sibling_config(__file__, 'recipe')


def get_config(arg=None):
  return recipe.recipe('tldr', __file__, arg)
