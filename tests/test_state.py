"""TrainState: sharded creation from abstract shapes, restore targets, RM-from-SFT init."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import config_lib, sharding, state


def tiny(**changes):
  return config_lib.GEOMETRIES['tiny'].replace(n_layers=2, max_len=32, **changes)


def mesh_of(shape):
  return sharding.make_mesh(dict(zip(sharding.AXES, shape)))


def reference_params(config, head, rng):
  return nn.unbox(jax.jit(lambda r: state.init_params(config, head, r))(rng))


def test_create_train_state_starts_at_step_zero():
  params = {'w': jnp.ones((3,))}
  tx = optax.adam(1e-2)
  s = state.create_train_state(params, tx)
  assert s.step.dtype == jnp.int32 and s.step.shape == ()
  s = s.apply_gradients({'w': jnp.ones((3,))}, tx)
  assert int(s.step) == 1
  np.testing.assert_allclose(s.params['w'], 1 - 1e-2, rtol=1e-6)  # Adam's first step is lr.


@pytest.mark.slow
def test_sharded_train_state_equals_unsharded_and_is_split():
  config, tx, rng = tiny(), optax.adam(1e-3), jax.random.key(3)
  mesh = mesh_of((2, 2, 2))
  s, shardings = state.create_sharded_train_state(config, 'lm', tx, mesh, rng)
  ref = state.create_train_state(reference_params(config, 'lm', rng), tx)
  assert jax.tree.structure(s) == jax.tree.structure(ref)
  for got, want in zip(jax.tree.leaves(s), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(got, want)  # the same init, only laid out differently
  for leaf, leaf_sharding in zip(jax.tree.leaves(s), jax.tree.leaves(shardings)):
    assert leaf.sharding == leaf_sharding
  assert s.step.sharding.is_fully_replicated
  # Adam's moments are split like their parameters: ('vocab', 'embed') -> ('tensor', 'fsdp').
  mu = s.opt_state[0].mu['trunk']['embed']['embedding']
  assert mu.addressable_shards[0].data.shape == (config.vocab_size // 2, config.d_model // 2)


@pytest.mark.slow
def test_abstract_train_state_matches_created_state():
  config, tx = tiny(), optax.adam(1e-3)
  mesh = mesh_of((1, 2, 4))
  abstract, shardings = state.abstract_train_state(config, 'scalar', tx, mesh)
  s, created_shardings = state.create_sharded_train_state(config, 'scalar', tx, mesh,
                                                          jax.random.key(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(s)
  for a, x, sh, created in zip(jax.tree.leaves(abstract), jax.tree.leaves(s),
                               jax.tree.leaves(shardings), jax.tree.leaves(created_shardings)):
    assert isinstance(a, jax.ShapeDtypeStruct)
    assert (a.shape, a.dtype) == (x.shape, x.dtype)
    assert a.sharding == sh == created


@pytest.mark.slow
def test_init_scalar_from_lm_copies_trunk_keeps_head():
  config = tiny()
  lm = reference_params(config, 'lm', jax.random.key(1))
  scalar = reference_params(config, 'scalar', jax.random.key(2))
  out = state.init_scalar_from_lm(lm, scalar)
  assert set(out) == set(scalar)
  for got, want in zip(jax.tree.leaves(out['trunk']), jax.tree.leaves(lm['trunk'])):
    np.testing.assert_array_equal(got, want)
  head, fresh_head = out['scalar_head'], scalar['scalar_head']
  for got, want in zip(jax.tree.leaves(head), jax.tree.leaves(fresh_head)):
    np.testing.assert_array_equal(got, want)
  # The result is a working scalar model.
  tokens = jnp.ones((2, 8), jnp.int32)
  values = state.make_model(config, 'scalar').apply({'params': out}, tokens, tokens > 0)
  assert values.shape == (2, 8) and bool(jnp.all(jnp.isfinite(values)))


@pytest.mark.slow
def test_init_scalar_from_lm_refuses_other_geometry():
  lm = reference_params(tiny(d_model=64), 'lm', jax.random.key(0))
  scalar = reference_params(tiny(), 'scalar', jax.random.key(0))
  with pytest.raises(ValueError, match='different geometry'):
    state.init_scalar_from_lm(lm, scalar)
