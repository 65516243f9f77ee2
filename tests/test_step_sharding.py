"""sft_step and rm_step on a mesh give the unsharded step's metrics and new state."""
import functools

import jax
import numpy as np
import pytest
from tiny_steps import OPT, TOTAL_STEPS, fresh_state, ranking_batch, tiny, token_batch

from rlhf_jax import optim, rm, sft, sharding, state

# name -> (step function, model head, batch builder)
STEPS = {'sft_step': (sft.sft_step, 'lm', token_batch),
         'rm_step': (rm.rm_step, 'scalar', ranking_batch)}


@functools.cache
def unsharded_case(name: str):
  """(config, tx, batch, rng, state, metrics) of one unsharded step, once per step function."""
  step_fn, head, make_batch = STEPS[name]
  # Dropout on: with jax's partitionable threefry the dropout mask does not depend on the layout.
  config = tiny(resid_dropout=0.1)
  tx = optim.make_optimizer(OPT, TOTAL_STEPS)
  step = jax.jit(functools.partial(step_fn, model=state.make_model(config, head), tx=tx,
                                   lr_schedule=optim.schedule(OPT, TOTAL_STEPS)))
  batch, rng = make_batch(config.vocab_size), jax.random.key(5)
  return (config, tx, batch, rng) + step(fresh_state(config, tx, head), batch, rng)


@pytest.mark.parametrize('shape', [(2, 2, 2), (8, 1, 1)])
@pytest.mark.parametrize('name', sorted(STEPS))
@pytest.mark.slow
def test_sharded_step_equals_unsharded(name, shape):
  step_fn, head, _ = STEPS[name]
  config, tx, batch, rng, ref_state, ref_metrics = unsharded_case(name)
  mesh = sharding.make_mesh(dict(zip(sharding.AXES, shape)))
  s, shardings = state.create_sharded_train_state(config, head, tx, mesh, jax.random.key(0))
  data = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  replicated = sharding.replicated(mesh)
  sharded_step = jax.jit(
      functools.partial(step_fn, model=state.make_model(config, head), tx=tx,
                        lr_schedule=optim.schedule(OPT, TOTAL_STEPS)),
      in_shardings=(shardings, data, replicated), out_shardings=(shardings, replicated),
      donate_argnums=0)
  with jax.set_mesh(mesh):
    new_state, metrics = sharded_step(s, batch, rng)
  # fp32 on CPU: sharding only reorders partial sums (~1e-6 relative); a wrong layout or a
  # mis-split batch gives O(1) differences, so 1e-5 separates the two.
  tol = dict(rtol=1e-5, atol=1e-5)
  for key in ref_metrics:
    np.testing.assert_allclose(metrics[key], ref_metrics[key], **tol)
  for got, want in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(got, want, **tol)
