"""Host loop: one compile with donation, metrics.jsonl, exact resume, kill-and-resume, NaN stop.

The model is a linear regression trained with optax Adam on 8 fake CPU devices; its step uses
the rng (input noise), so resuming also checks the stateless per-step keys. Run as a script
(`python tests/test_loop.py WORKDIR TOTAL KILL_AT`) it is the subprocess of the kill test.
"""
import functools
import json
import os
import signal
import subprocess
import sys

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from rlhf_jax import checkpoint, loop, sharding

DIM, BATCH = 4, 8
FINGERPRINT = {'policy.head': 'lm', 'policy.d_model': DIM}


@flax.struct.dataclass
class ToyState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def toy_step(state, batch, rng, *, tx):
  """One Adam step of least squares on noisy inputs (the noise comes from rng)."""
  def loss_fn(params):
    x = batch['x'] * (1 + 0.1 * jax.random.normal(rng, batch['x'].shape))
    return jnp.mean((x @ params['w'] + params['b'] - batch['y']) ** 2)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new = ToyState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
  return new, {'toy/loss': loss, 'toy/w_norm': jnp.linalg.norm(new.params['w'])}


def toy_init(tx):
  params = {'w': jnp.zeros(DIM), 'b': jnp.zeros(())}
  return ToyState(jnp.int32(0), params, tx.init(params))


def toy_dataset(nan_batch: int | None = None) -> grain.IterDataset:
  """Endless shuffled regression examples; batch `nan_batch` (in order) has NaN targets."""
  w = np.arange(1, DIM + 1, dtype=np.float32)

  def example(i):
    x = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    y = np.float32(np.nan if nan_batch is not None and i // BATCH == nan_batch else x @ w)
    return {'x': x, 'y': y, 'tokens': np.zeros(3, np.int32)}
  ds = grain.MapDataset.range(64)
  ds = ds.repeat(None) if nan_batch is not None else ds.shuffle(seed=1).repeat(None)
  return ds.map(example).to_iter_dataset().batch(BATCH)


def toy_run(stage_dir, total_steps, *, log_every=2, checkpoint_every=5, nan_batch=None,
            fingerprint=FINGERPRINT, wrap=lambda f: f, data=None, tx=None, divergence=0.0):
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  tx = tx or optax.adam(0.1)
  init = functools.partial(toy_init, tx)
  state_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), jax.eval_shape(init))
  batch_shardings = sharding.batch_sharding(mesh, 1)
  step = loop.jit_step(functools.partial(toy_step, tx=tx), state_shardings=state_shardings,
                       batch_shardings=batch_shardings)
  return loop.run(
      wrap(step), init_state=jax.jit(init, out_shardings=state_shardings),
      abstract_state=sharding.with_shardings(jax.eval_shape(init), state_shardings),
      data=data or toy_dataset(nan_batch), stage_dir=str(stage_dir), base_rng=jax.random.key(0),
      schedule=loop.Schedule(total_steps, log_every=log_every, checkpoint_every=checkpoint_every,
                             **({'divergence': divergence} if divergence else {})),
      fingerprint=fingerprint, batch_shardings=batch_shardings, loss_key='toy/loss')


def read_lines(path):
  with open(path) as f:
    return f.read().splitlines()


def test_jit_step_donates_and_compiles_once():
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  tx = optax.sgd(0.1)
  params = {'w': jnp.zeros(DIM), 'b': jnp.zeros(())}
  replicated = sharding.replicated(mesh)
  state = jax.device_put(ToyState(jnp.int32(0), params, tx.init(params)), replicated)
  step = loop.jit_step(functools.partial(toy_step, tx=tx), state_shardings=replicated,
                       batch_shardings=sharding.batch_sharding(mesh, 1))
  batch = loop.shard_batch(next(iter(toy_dataset())), sharding.batch_sharding(mesh, 1))
  assert batch['x'].sharding.spec == PartitionSpec(sharding.BATCH_AXES)
  old = state
  state, _ = step(state, batch, jax.random.key(0))
  state, _ = step(state, batch, jax.random.key(1))
  assert step._cache_size() == 1
  assert old.params['w'].is_deleted()
  assert int(state.step) == 2



def test_jit_step_applies_activation_constraints():
  # The compiler would keep the output split by rows like the input; only the step's constraint,
  # effective when traced under the mesh, makes it whole on every device.
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  rows = sharding.batch_sharding(mesh, 1)

  def gather_rows(state, batch, rng):
    del rng
    return state, {'x': sharding.constrain(batch['x'] * 2, (None, None))}

  step = loop.jit_step(gather_rows, state_shardings=sharding.replicated(mesh),
                       batch_shardings=rows)
  batch = loop.shard_batch(next(iter(toy_dataset())), rows)
  state = jax.device_put(jnp.zeros(()), sharding.replicated(mesh))
  assert 'jit_gather_rows' in step.lower(state, batch, jax.random.key(0)).as_text()
  _, metrics = step(state, batch, jax.random.key(0))
  assert metrics['x'].sharding.is_fully_replicated
  np.testing.assert_array_equal(metrics['x'], 2 * np.asarray(batch['x']))

def test_metrics_jsonl_content(tmp_path):
  result = toy_run(tmp_path, 7, log_every=3)
  lines = [json.loads(line) for line in read_lines(tmp_path / 'metrics.jsonl')]
  assert [line['step'] for line in lines] == [3, 6, 7]
  assert all(set(line) == {'step', 'toy/loss', 'toy/w_norm'} for line in lines)
  assert lines[0]['toy/loss'] > lines[-1]['toy/loss']
  perf = [json.loads(line) for line in read_lines(tmp_path / 'perf.jsonl')]
  assert perf[0]['perf/tokens_per_sec'] > 0 and 'perf/steps_per_sec' in perf[0]
  assert os.listdir(tmp_path / 'tensorboard')
  assert result.step == 7 and result.stopped_by is None
  assert result.metrics == {k: v for k, v in lines[-1].items() if k != 'step'}
  assert checkpoint.Checkpointer(str(tmp_path), FINGERPRINT).latest_step() == 7


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
  full = toy_run(tmp_path / 'full', 10)
  toy_run(tmp_path / 'split', 6)  # checkpoints at 5 and 6 (the end)
  # A line past the checkpoint, as left by a crash after logging: it must be dropped.
  with open(tmp_path / 'split' / 'metrics.jsonl', 'a') as f:
    f.write(json.dumps({'step': 8, 'toy/loss': -1.0}) + '\n')
  resumed = toy_run(tmp_path / 'split', 10)
  assert read_lines(tmp_path / 'full' / 'metrics.jsonl') == read_lines(
      tmp_path / 'split' / 'metrics.jsonl')
  np.testing.assert_array_equal(full.state.params['w'], resumed.state.params['w'])


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
  # Step 5's loss is computed from the state after step 4: that checkpoint is not trusted.
  with pytest.raises(loop.NonFiniteLoss, match=r'^step 5: toy/loss is nan, computed from the '
                     r'state after step 4; .* removed checkpoint 4; .* step 2 in '):
    toy_run(tmp_path, 10, log_every=3, checkpoint_every=2, nan_batch=4)
  assert checkpoint.Checkpointer(str(tmp_path), FINGERPRINT).latest_step() == 2
  assert [json.loads(line)['step'] for line in read_lines(tmp_path / 'metrics.jsonl')] == [3]


def test_other_geometry_refused(tmp_path):
  toy_run(tmp_path, 2)
  with pytest.raises(checkpoint.CheckpointMismatch) as e:
    toy_run(tmp_path, 4, fingerprint={**FINGERPRINT, 'policy.d_model': 8})
  assert '\n' not in str(e.value) and 'policy.d_model' in str(e.value)


def test_two_phase_iteration_with_frozen_extras(tmp_path):
  """PPO's shape: two jitted phases per step, a frozen extra, a tuple of datasets."""
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  tx, rep, rows = optax.adam(0.1), sharding.replicated(mesh), sharding.batch_sharding(mesh, 1)
  frozen = jax.device_put({'scale': jnp.float32(2.0)}, rep)
  make_targets = loop.jit_step(  # like make_experience: reads the state, does not return it
      lambda state, frozen, batch, rng: ({**batch, 'y': batch['y'] * frozen['scale']}, {}),
      state_shardings=rep, batch_shardings=rows, extra_shardings=(rep,), donate_state=False,
      out_shardings=None)
  train = loop.jit_step(lambda state, exp, batch, rng: toy_step(state, exp, rng, tx=tx),
                        state_shardings=rep, batch_shardings=rows, extra_shardings=(rows,))

  def iteration(state, batch, rng):
    (exp, _), seconds = loop.timed(make_targets, state, frozen, batch[0], rng)
    state, metrics = train(state, exp, batch[1], rng)
    return state, {**metrics, 'time/generate': seconds}

  def go(total):
    init = functools.partial(toy_init, tx)
    return loop.run(
        iteration, init_state=jax.jit(init, out_shardings=rep),
        abstract_state=sharding.with_shardings(jax.eval_shape(init), rep),
        data=(toy_dataset(), toy_dataset()), stage_dir=str(tmp_path), base_rng=jax.random.key(0),
        schedule=loop.Schedule(total, log_every=2), fingerprint=FINGERPRINT,
        batch_shardings=rows, loss_key='toy/loss')
  assert go(2).step == 2
  assert go(4).step == 4 and train._cache_size() == 1 and make_targets._cache_size() == 1
  assert checkpoint.Checkpointer(str(tmp_path), FINGERPRINT, num_data=2).latest_step() == 4
  assert 'time/generate' in read_lines(tmp_path / 'perf.jsonl')[-1]
  assert 'time/generate' not in read_lines(tmp_path / 'metrics.jsonl')[-1]


def _kill_once(marker, kill_at):
  """Wraps a step so the process sends itself SIGTERM after step `kill_at`, on the first run."""
  def wrap(step):
    def wrapped(state, batch, rng):
      state, metrics = step(state, batch, rng)
      if int(state.step) == kill_at and not os.path.exists(marker):
        open(marker, 'w').close()
        os.kill(os.getpid(), signal.SIGTERM)
      return state, metrics
    return wrapped
  return wrap


def _main(workdir, total, kill_at):
  # tensorboardX imports torch when it can (seconds); this process has no use for it.
  sys.modules['torch'] = None
  result = toy_run(workdir, int(total), wrap=_kill_once(os.path.join(workdir, 'killed'),
                                                        int(kill_at)))
  sys.exit(128 + result.stopped_by if result.stopped_by else 0)


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')

  def launch(workdir, kill_at):
    return subprocess.Popen([sys.executable, __file__, str(workdir), '12', str(kill_at)],
                            env=env, stderr=subprocess.PIPE, text=True)

  def finish(process):
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr
  # The uninterrupted and the killed run are independent: run them side by side.
  full, killed = launch(tmp_path / 'full', 0), launch(tmp_path / 'killed', 7)
  (full_rc, full_err), (killed_rc, killed_err) = finish(full), finish(killed)
  assert full_rc == 0, full_err[-2000:]
  assert killed_rc == 128 + signal.SIGTERM, killed_err[-2000:]
  assert 'SIGTERM: saved step 7' in killed_err
  resumed_rc, resumed_err = finish(launch(tmp_path / 'killed', 7))
  assert resumed_rc == 0, resumed_err[-2000:]
  assert 'resuming from step 7' in resumed_err
  assert read_lines(tmp_path / 'full' / 'metrics.jsonl') == read_lines(
      tmp_path / 'killed' / 'metrics.jsonl')


if __name__ == '__main__':
  _main(*sys.argv[1:])
