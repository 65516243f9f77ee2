"""rm_step / rm_eval_step / reward_scores / normalisation_bias: per-sequence references, padded K,
overfitting, dropout, sharded == unsharded."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import config_lib, losses, models, optim, rm, sharding, state

B, K, T = 8, 4, 16
OPT = config_lib.optimizer_config(1e-3, schedule='cosine', final_lr_frac=0.1)
# Adam's first update is lr * g / (|g| + eps): with eps 1e-8, a 1e-10 reordering difference in a
# near-zero gradient moves that update by ~lr / 100, so sharded and unsharded steps would differ
# by far more than their gradients do. eps 1e-6 keeps the sharding comparison about gradients.
OPT.eps = 1e-6
TOTAL_STEPS = 100


def tiny(**changes):
  return config_lib.GEOMETRIES['tiny'].replace(n_layers=2, max_len=32, **changes)


def ranking_batch(vocab, seed=0):
  """K_max = 4 with 2..4 real completions per prompt, ties, and all-pad rows for missing ones."""
  rng = np.random.default_rng(seed)
  n_real = np.array([4, 3, 2, 4, 3, 4, 2, 4])
  valid = np.arange(K)[None, :] < n_real[:, None]  # [B, K]
  lengths = rng.integers(4, T + 1, (B, K))
  mask = (np.arange(T)[None, None, :] < lengths[..., None]) & valid[..., None]  # [B, K, T]
  tokens = np.where(mask, rng.integers(1, vocab, (B, K, T)), 0).astype(np.int32)
  ranks = np.where(valid, rng.integers(0, 3, (B, K)), -1).astype(np.int32)  # 3 levels: ties
  return {'tokens': tokens, 'mask': mask, 'ranks': ranks, 'valid': valid}


def fresh_state(config, tx, seed=0):
  params = nn.unbox(jax.jit(lambda r: state.init_params(config, 'scalar', r))(jax.random.key(seed)))
  return state.create_train_state(params, tx)


@functools.cache
def setup(config):
  """(model, tx, jitted rm_step) per config, cached so that tests share compilations."""
  model = state.make_model(config, 'scalar')
  tx = optim.make_optimizer(OPT, TOTAL_STEPS)
  step = functools.partial(rm.rm_step, model=model, tx=tx,
                           lr_schedule=optim.schedule(OPT, TOTAL_STEPS))
  return model, tx, jax.jit(step)


def one_at_a_time_rewards(params, model, batch):
  """[B, K] rewards, each completion scored alone as a [1, T] batch (NaN where not valid)."""
  score = jax.jit(lambda p, t, m: models.last_token_value(
      model.apply({'params': p}, t, m), m))
  rewards = np.full((B, K), np.nan, np.float32)
  for b in range(B):
    for k in range(K):
      if batch['valid'][b, k]:
        rewards[b, k] = score(params, batch['tokens'][b, k][None], batch['mask'][b, k][None])[0]
  return rewards


def test_step_loss_matches_per_sequence_rewards_with_padded_k():
  config = tiny()
  model, tx, step = setup(config)
  s, batch = fresh_state(config, tx), ranking_batch(config.vocab_size)
  rewards = one_at_a_time_rewards(s.params, model, batch)
  want_loss, want = losses.ranking_loss(jnp.asarray(rewards), batch['ranks'], batch['valid'])
  # tiny has no dropout, so the training forward is the deterministic one.
  new_state, metrics = step(s, batch, jax.random.key(0))
  np.testing.assert_allclose(metrics['rm/loss'], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['rm/accuracy'], want['accuracy'], rtol=1e-6)
  assert metrics['rm/pairs'] == want['pairs'] and metrics['rm/prompts'] == want['prompts']
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new_state.params))
  # reward_scores flattens any leading shape the same way.
  scores = jax.jit(functools.partial(rm.reward_scores, model=model))(
      s.params, batch['tokens'], batch['mask'])
  np.testing.assert_allclose(np.where(batch['valid'], scores, np.nan), rewards, rtol=1e-5,
                             atol=1e-6)


def test_eval_sums_give_the_training_loss_and_accuracy():
  config = tiny()
  model, tx, step = setup(config)
  s, batch = fresh_state(config, tx), ranking_batch(config.vocab_size, seed=1)
  _, train = step(s, batch, jax.random.key(0))
  halves = [{k: v[:B // 2] for k, v in batch.items()}, {k: v[B // 2:] for k, v in batch.items()}]
  evaluate = jax.jit(functools.partial(rm.rm_eval_step, model=model))
  sums = {name: sum(float(evaluate(s.params, h)[name]) for h in halves)
          for name in ('rm/loss_sum', 'rm/prompts', 'rm/correct', 'rm/pairs')}
  np.testing.assert_allclose(sums['rm/loss_sum'] / sums['rm/prompts'], train['rm/loss'], rtol=1e-5)
  np.testing.assert_allclose(sums['rm/correct'] / sums['rm/pairs'], train['rm/accuracy'], rtol=1e-6)
  assert sums['rm/pairs'] == train['rm/pairs']


def test_overfits_one_batch():
  config = tiny()
  _, tx, step = setup(config)
  s, batch, base = fresh_state(config, tx), ranking_batch(config.vocab_size), jax.random.key(0)
  history = []
  for i in range(30):
    s, metrics = step(s, batch, jax.random.fold_in(base, i))
    history.append((float(metrics['rm/loss']), float(metrics['rm/accuracy'])))
  assert history[-1][0] < 0.5 * history[0][0], history
  assert history[-1][1] == 1.0, history
  np.testing.assert_allclose(metrics['learning/lr'], optim.schedule(OPT, TOTAL_STEPS)(29),
                             rtol=1e-6)


@pytest.mark.parametrize('dropout', [0.0, 0.1])
def test_dropout_follows_rng(dropout):
  config = tiny(resid_dropout=dropout)
  _, tx, step = setup(config)
  s, batch = fresh_state(config, tx), ranking_batch(config.vocab_size)
  loss_a = step(s, batch, jax.random.key(1))[1]['rm/loss']
  loss_b = step(s, batch, jax.random.key(2))[1]['rm/loss']
  assert (loss_a != loss_b) == (dropout > 0)
  assert step(s, batch, jax.random.key(1))[1]['rm/loss'] == loss_a


def test_normalisation_bias_centres_demonstrations():
  config = tiny()
  model, tx, _ = setup(config)
  params = fresh_state(config, tx, seed=3).params
  rng = np.random.default_rng(4)
  mask = np.arange(T)[None, :] < rng.integers(2, T + 1, 12)[:, None]  # [12, T]
  tokens = np.where(mask, rng.integers(1, config.vocab_size, (12, T)), 0).astype(np.int32)
  score = jax.jit(functools.partial(rm.reward_scores, model=model))
  # The stage scores the demonstrations batch by batch, then takes one mean.
  raw = np.concatenate([score(params, tokens[i:i + 4], mask[i:i + 4]) for i in range(0, 12, 4)])
  bias = rm.normalisation_bias(raw)
  assert isinstance(bias, float) and abs(bias) > 1e-3  # a real shift, not a no-op
  shifted = np.concatenate([score(params, tokens[i:i + 4], mask[i:i + 4], bias=bias)
                            for i in range(0, 12, 4)])
  np.testing.assert_allclose(np.mean(shifted), 0.0, atol=1e-5)
  np.testing.assert_allclose(shifted, raw - bias, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='no demonstration scores'):
    rm.normalisation_bias([])


def unsharded_case():
  """(config, tx, batch, rng, state, metrics) of one unsharded step (its compile is shared)."""
  # Dropout on: with jax's partitionable threefry the dropout mask does not depend on the layout.
  config = tiny(resid_dropout=0.1)
  tx, step = setup(config)[-2:]
  batch, rng = ranking_batch(config.vocab_size), jax.random.key(5)
  return (config, tx, batch, rng) + step(fresh_state(config, tx), batch, rng)


@pytest.mark.parametrize('shape', [(2, 2, 2), (8, 1, 1)])
def test_sharded_step_equals_unsharded(shape):
  config, tx, batch, rng, ref_state, ref_metrics = unsharded_case()
  mesh = sharding.make_mesh(dict(zip(sharding.AXES, shape)))
  s, shardings = state.create_sharded_train_state(config, 'scalar', tx, mesh, jax.random.key(0))
  data = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  replicated = sharding.replicated(mesh)
  sharded_step = jax.jit(
      functools.partial(rm.rm_step, model=state.make_model(config, 'scalar'), tx=tx,
                        lr_schedule=optim.schedule(OPT, TOTAL_STEPS)),
      in_shardings=(shardings, data, replicated), out_shardings=(shardings, replicated),
      donate_argnums=0)
  with jax.set_mesh(mesh):
    new_state, metrics = sharded_step(s, batch, rng)
  # fp32 on CPU: sharding only reorders partial sums (~1e-6 relative); a wrong layout or a
  # mis-split batch gives O(1) differences, so 1e-5 separates the two.
  tol = dict(rtol=1e-5, atol=1e-5)
  for name in ref_metrics:
    np.testing.assert_allclose(metrics[name], ref_metrics[name], **tol)
  for got, want in zip(jax.tree.leaves(new_state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(got, want, **tol)
