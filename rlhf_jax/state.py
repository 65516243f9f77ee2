"""Model construction without allocation, and the train-state pytrees of every stage."""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rlhf_jax import sharding
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


@flax.struct.dataclass
class TrainState:
  """What one optimised model carries between steps (SFT, pretrain, RM).

  Attributes:
    step: int32 scalar, number of updates applied; also the loop's rng fold-in index.
    params: the model parameters (unboxed).
    opt_state: the optax state of `tx`. The transformation itself is not stored: steps take it as
      a static argument, so the state stays a plain pytree of arrays (checkpointable, donatable).
  """
  step: jax.Array
  params: Any
  opt_state: Any

  def apply_gradients(self, grads, tx: optax.GradientTransformation) -> 'TrainState':
    """The state after one `tx` update with `grads` (a pytree shaped like params)."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def create_train_state(params, tx: optax.GradientTransformation) -> TrainState:
  """A step-0 state. Given logically boxed params, the Adam moments come out boxed the same way."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _init_train_state(config: ModelConfig, head: str, tx: optax.GradientTransformation,
                      rng: jax.Array) -> TrainState:
  return create_train_state(init_params(config, head, rng), tx)


def abstract_train_state(config: ModelConfig, head: str, tx: optax.GradientTransformation,
                         mesh: Mesh) -> tuple[TrainState, TrainState]:
  """ShapeDtypeStructs of a TrainState (each carrying its sharding) and the shardings.

  Nothing is allocated: this is the target to restore a checkpoint into, or to lower a step for
  an ahead-of-time memory check.
  """
  return sharding.abstract_sharded(functools.partial(_init_train_state, config, head, tx), mesh,
                                   jax.random.key(0))


def create_sharded_train_state(config: ModelConfig, head: str, tx: optax.GradientTransformation,
                               mesh: Mesh, rng: jax.Array) -> tuple[TrainState, TrainState]:
  """A freshly initialised TrainState, each array created directly in its sharded layout.

  Parameters and Adam moments follow the parameters' logical axis names (`sharding.RULES`); the
  step and other scalars are replicated. Full parameters never materialise on one device.

  Returns:
    (state, state_shardings): the shardings are what `loop.py` passes as in/out shardings.
  """
  return sharding.create_sharded(functools.partial(_init_train_state, config, head, tx), mesh, rng)


def _shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


def init_scalar_from_lm(lm_params, scalar_params):
  """Scalar-model params: the trunk of `lm_params`, the fresh `scalar_head` of `scalar_params`.

  The RM starts from the SFT model this way (paper section 3.5: "starting from the SFT model with
  the final unembedding layer removed"); any model with a `trunk` works as the source, but the
  paper's value function starts from the whole RM, head included: use the RM params as they are.
  The trunk arrays are shared, not copied: donating the result invalidates `lm_params`.

  Raises:
    ValueError: when the two trunks differ in structure or shapes (different geometries).
  """
  source, target = lm_params['trunk'], scalar_params['trunk']
  if _shapes(source) != _shapes(target):
    raise ValueError('init_scalar_from_lm: the source trunk has a different geometry or dtype '
                     'from the scalar model being initialised')
  return {**scalar_params, 'trunk': source}
