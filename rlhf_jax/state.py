"""Model construction without allocation, and the train-state pytrees of every stage."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models import LanguageModel, ModelConfig, ScalarModel


def make_model(config: ModelConfig, head: str):
  """The Flax module for a role's head: 'lm' (next-token logits) or 'scalar' (reward / value)."""
  if head == 'lm':
    return LanguageModel(config)
  if head == 'scalar':
    return ScalarModel(config)
  raise ValueError(f'unknown head {head!r}')


def init_params(config: ModelConfig, head: str, rng: jax.Array):
  """Parameters (logically partitioned boxes kept, for sharded creation). Shapes only matter."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  return make_model(config, head).init(rng, tokens, tokens > 0)['params']


def abstract_params(config: ModelConfig, head: str):
  """ShapeDtypeStructs of the parameters: no memory is allocated (works for 175B on a laptop)."""
  return jax.eval_shape(functools.partial(init_params, config, head), jax.random.key(0))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
