"""Checkpoints: sharded save/restore, data positions, refusing other geometries, hand-offs."""
import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import checkpoint, config_lib, sharding


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def make_state(d_model=16):
  """A state whose 'w' is split over the fsdp axis, plus its shardings."""
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4, 'tensor': 1})
  params = {'w': jnp.arange(d_model * 4.0).reshape(d_model, 4), 'b': jnp.ones(4)}
  tx = optax.adam(1e-3)
  state = State(jnp.int32(3), params, tx.init(params))

  def leaf_sharding(x):
    return NamedSharding(mesh, PartitionSpec('fsdp') if x.ndim == 2 else PartitionSpec())
  shardings = jax.tree.map(leaf_sharding, state)
  return jax.device_put(state, shardings), shardings


def roles(d_model=128):
  return {'policy': (config_lib.GEOMETRIES['tiny'].replace(d_model=d_model), 'lm')}


def test_fingerprint_names_roles_and_geometry():
  fp = checkpoint.fingerprint(roles())
  assert fp['policy.head'] == 'lm' and fp['policy.d_model'] == 128
  assert fp['policy.kv_heads'] == 4 and 'policy.resid_dropout' not in fp


def test_save_restore_sharded_with_data_position(tmp_path):
  state, shardings = make_state()
  ds = grain.MapDataset.range(100).batch(2).to_iter_dataset()
  it = iter(ds)
  next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path), checkpoint.fingerprint(roles()), keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state, [it])
  ckpt.close()
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '3']
  fresh = iter(ds)
  ckpt = checkpoint.Checkpointer(str(tmp_path), checkpoint.fingerprint(roles()))
  restored, step = ckpt.restore(sharding.with_shardings(jax.eval_shape(lambda: state), shardings),
                                [fresh])
  ckpt.close()
  assert step == 3
  np.testing.assert_array_equal(next(fresh), [2, 3])
  assert restored.params['w'].sharding == shardings.params['w']
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_other_geometry_refused_in_one_line(tmp_path):
  state, shardings = make_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), checkpoint.fingerprint(roles(128)))
  ckpt.save(5, state)
  ckpt.close()
  other = checkpoint.Checkpointer(str(tmp_path), checkpoint.fingerprint(roles(256)))
  target = sharding.with_shardings(jax.eval_shape(lambda: state), shardings)
  with pytest.raises(checkpoint.CheckpointMismatch) as e:
    other.restore(target)
  message = str(e.value)
  assert '\n' not in message and str(tmp_path / 'checkpoints' / '5') in message
  assert 'policy.d_model=128' in message and 'policy.d_model=256' in message


def test_shape_mismatch_refused_before_reading(tmp_path):
  """Same fingerprint, different arrays (e.g. a changed head): named, no shape traceback."""
  state, _ = make_state(16)
  ckpt = checkpoint.Checkpointer(str(tmp_path), {'policy.head': 'lm'})
  ckpt.save(1, state)
  ckpt.wait()
  bigger, shardings = make_state(32)
  target = sharding.with_shardings(jax.eval_shape(lambda: bigger), shardings)
  with pytest.raises(checkpoint.CheckpointMismatch, match=r'params/w has shape \(16, 4\), the '
                     r'config needs \(32, 4\)$'):
    ckpt.restore(target)
  ckpt.close()


def test_load_params_hand_off(tmp_path):
  state, shardings = make_state()
  ckpt = checkpoint.Checkpointer(str(tmp_path), checkpoint.fingerprint(roles()))
  ckpt.save(7, state)
  ckpt.close()
  abstract = jax.eval_shape(lambda: state.params)
  with pytest.raises(FileNotFoundError, match='not complete'):
    checkpoint.load_params(str(tmp_path), abstract, shardings.params)
  checkpoint.write_summary(str(tmp_path), {'step': 7, 'checkpoint_step': 7})
  assert checkpoint.is_complete(str(tmp_path))
  assert checkpoint.read_summary(str(tmp_path)) == {'step': 7, 'checkpoint_step': 7}
  params = checkpoint.load_params(str(tmp_path), abstract, shardings.params,
                                  fingerprint=checkpoint.fingerprint(roles()))
  assert params['w'].sharding == shardings.params['w']
  np.testing.assert_array_equal(params['w'], state.params['w'])
  with pytest.raises(checkpoint.CheckpointMismatch, match='policy.d_model'):
    checkpoint.load_params(str(tmp_path), abstract, shardings.params,
                           fingerprint=checkpoint.fingerprint(roles(64)))
