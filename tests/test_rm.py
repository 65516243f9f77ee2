"""rm_step / rm_eval_step / reward_scores / normalisation_bias: per-sequence references, padded K,
overfitting, dropout (sharded == unsharded: test_step_sharding)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_steps import B, K, OPT, T, TOTAL_STEPS, fresh_state, ranking_batch, tiny

from rlhf_jax import losses, models, optim, rm, state


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


@pytest.mark.slow
def test_step_loss_matches_per_sequence_rewards_with_padded_k():
  config = tiny()
  model, tx, step = setup(config)
  s, batch = fresh_state(config, tx, 'scalar'), ranking_batch(config.vocab_size)
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


@pytest.mark.slow
def test_eval_sums_give_the_training_loss_and_accuracy():
  config = tiny()
  model, tx, step = setup(config)
  s, batch = fresh_state(config, tx, 'scalar'), ranking_batch(config.vocab_size, seed=1)
  _, train = step(s, batch, jax.random.key(0))
  halves = [{k: v[:B // 2] for k, v in batch.items()}, {k: v[B // 2:] for k, v in batch.items()}]
  evaluate = jax.jit(functools.partial(rm.rm_eval_step, model=model))
  sums = {name: sum(float(evaluate(s.params, h)[name]) for h in halves)
          for name in ('rm/loss_sum', 'rm/prompts', 'rm/correct', 'rm/pairs')}
  np.testing.assert_allclose(sums['rm/loss_sum'] / sums['rm/prompts'], train['rm/loss'], rtol=1e-5)
  np.testing.assert_allclose(sums['rm/correct'] / sums['rm/pairs'], train['rm/accuracy'], rtol=1e-6)
  assert sums['rm/pairs'] == train['rm/pairs']


@pytest.mark.slow
def test_overfits_one_batch():
  config = tiny()
  _, tx, step = setup(config)
  s, base = fresh_state(config, tx, 'scalar'), jax.random.key(0)
  batch = ranking_batch(config.vocab_size)
  history = []
  for i in range(30):
    s, metrics = step(s, batch, jax.random.fold_in(base, i))
    history.append((float(metrics['rm/loss']), float(metrics['rm/accuracy'])))
  assert history[-1][0] < 0.5 * history[0][0], history
  assert history[-1][1] == 1.0, history
  np.testing.assert_allclose(metrics['learning/lr'], optim.schedule(OPT, TOTAL_STEPS)(29),
                             rtol=1e-6)


@pytest.mark.parametrize('dropout', [0.0, 0.1])
@pytest.mark.slow
def test_dropout_follows_rng(dropout):
  config = tiny(resid_dropout=dropout)
  _, tx, step = setup(config)
  s, batch = fresh_state(config, tx, 'scalar'), ranking_batch(config.vocab_size)
  loss_a = step(s, batch, jax.random.key(1))[1]['rm/loss']
  loss_b = step(s, batch, jax.random.key(2))[1]['rm/loss']
  assert (loss_a != loss_b) == (dropout > 0)
  assert step(s, batch, jax.random.key(1))[1]['rm/loss'] == loss_a


@pytest.mark.slow
def test_normalisation_bias_centres_demonstrations():
  config = tiny()
  model, tx, _ = setup(config)
  params = fresh_state(config, tx, 'scalar', seed=3).params
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
