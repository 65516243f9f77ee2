"""Sharded forward passes and gradient steps equal unsharded ones on 8 fake CPU devices."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import config_lib, sharding, state

# fp32 on CPU: a sharded matmul only reorders partial sums, ~1e-6 relative; 1e-5 leaves margin
# for the 2-layer depth without hiding a wrong layout (which gives O(1) differences).
TOL = dict(rtol=1e-5, atol=1e-5)
MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]


def tiny(flavour):
  base = config_lib.GEOMETRIES['llama-tiny' if flavour == 'llama' else 'tiny']
  return base.replace(n_layers=2, max_len=32)


def mesh_of(shape):
  return sharding.make_mesh(dict(zip(sharding.AXES, shape)))


def batch(vocab, b=8, t=16, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
  lengths = rng.integers(t // 2, t + 1, b)
  mask = np.arange(t)[None, :] < lengths[:, None]
  return jnp.asarray(tokens), jnp.asarray(mask)


def loss_fn(params, model, tokens, mask):
  logits = model.apply({'params': params}, tokens, mask)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
  weights = mask[:, 1:]
  return jnp.sum(nll * weights) / jnp.sum(weights)


def sgd_step(params, tokens, mask, model):
  loss, grads = jax.value_and_grad(loss_fn)(params, model, tokens, mask)
  return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), loss


def test_mesh_shape_infers_one_axis():
  assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match='not divisible'):
    sharding.mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
  with pytest.raises(ValueError, match='needs 4 devices'):
    sharding.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)


def test_rules_first_match_each_axis_once():
  assert sharding.logical_spec(('embed', 'mlp')) == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert sharding.logical_spec(('act_batch', 'act_length', 'act_embed')) == \
      jax.sharding.PartitionSpec(('data', 'fsdp'), None, None)


@pytest.mark.parametrize('flavour', ['gpt3', 'llama'])
@pytest.mark.parametrize('shape', MESHES)
@pytest.mark.slow
def test_sharded_forward_and_step_equal_unsharded(flavour, shape):
  config = tiny(flavour)
  model = state.make_model(config, 'lm')
  init = functools.partial(state.init_params, config, 'lm')
  rng = jax.random.key(0)
  reference_params = nn.unbox(jax.jit(init)(rng))
  tokens, mask = batch(config.vocab_size)
  ref_logits = model.apply({'params': reference_params}, tokens, mask)
  ref_params, ref_loss = jax.jit(functools.partial(sgd_step, model=model))(
      reference_params, tokens, mask)

  mesh = mesh_of(shape)
  params, shardings = sharding.create_sharded(init, mesh, rng)
  data = sharding.batch_sharding(mesh)
  traces = []

  def counted_step(params, tokens, mask):
    traces.append(1)  # runs only while tracing
    return sgd_step(params, tokens, mask, model)

  step = jax.jit(counted_step, in_shardings=(shardings, data, data),
                 out_shardings=(shardings, sharding.replicated(mesh)))
  with jax.set_mesh(mesh):
    logits = jax.jit(lambda p, t, m: model.apply({'params': p}, t, m))(params, tokens, mask)
    new_params, loss = step(params, tokens, mask)
    step(new_params, tokens, mask)
  assert len(traces) == 1, 'second call recompiled'
  np.testing.assert_allclose(logits, ref_logits, **TOL)
  np.testing.assert_allclose(loss, ref_loss, **TOL)
  for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.slow
def test_parameters_really_split():
  config = tiny('gpt3')
  mesh = mesh_of((1, 2, 4))
  params, _ = sharding.create_sharded(
      functools.partial(state.init_params, config, 'lm'), mesh, jax.random.key(0))
  leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  embedding = next(x for k, x in leaves.items() if 'embed' in k.lower() and x.ndim == 2
                   and x.shape[0] == config.vocab_size)
  # ('vocab', 'embed') -> ('tensor', 'fsdp'): each device holds a quarter of the rows, half the columns.
  assert embedding.addressable_shards[0].data.shape == (config.vocab_size // 4, config.d_model // 2)
  total = sum(x.size for x in leaves.values())
  per_device = sum(x.addressable_shards[0].data.size for x in leaves.values())
  assert per_device < total / 4  # the big matrices are split 8 ways (fsdp x tensor)
