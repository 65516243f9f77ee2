"""sft_step, sft_eval_step: loss against a token loop, overfitting, dropout (sharding:
test_step_sharding)."""
import functools

import jax
import numpy as np
import pytest
from tiny_steps import B, OPT, T, TOTAL_STEPS, fresh_state, tiny, token_batch

from rlhf_jax import optim, sft, state


@functools.cache
def setup(config):
  """(tx, jitted sft_step) per config, cached so that tests share compilations."""
  tx = optim.make_optimizer(OPT, TOTAL_STEPS)
  step = functools.partial(sft.sft_step, model=state.make_model(config, 'lm'), tx=tx,
                           lr_schedule=optim.schedule(OPT, TOTAL_STEPS))
  return tx, jax.jit(step)


@pytest.mark.slow
def test_loss_matches_token_loop():
  config = tiny()
  tx, step = setup(config)
  s = fresh_state(config, tx, 'lm')
  batch = token_batch(config.vocab_size)
  model = state.make_model(config, 'lm')
  logits = np.asarray(model.apply({'params': s.params}, batch['tokens'], batch['mask']), np.float64)
  nll_sum, count = 0.0, 0
  for b in range(B):
    for t in range(1, T):
      if batch['loss_mask'][b, t]:  # token t is predicted from position t - 1
        row = logits[b, t - 1]
        nll_sum += np.log(np.exp(row - row.max()).sum()) + row.max() - row[batch['tokens'][b, t]]
        count += 1
  got = jax.jit(functools.partial(sft.sft_eval_step, model=model))(s.params, batch)
  np.testing.assert_allclose(got['sft/loss_sum'], nll_sum, rtol=1e-5)
  assert got['sft/tokens'] == count
  # tiny has no dropout, so the training step's loss is the same exact token mean.
  _, metrics = step(s, batch, jax.random.key(0))
  np.testing.assert_allclose(metrics['sft/loss'], nll_sum / count, rtol=1e-5)
  assert metrics['sft/tokens'] == count


@pytest.mark.slow
def test_eval_sums_average_exactly_over_batches():
  config = tiny()
  model = state.make_model(config, 'lm')
  params = fresh_state(config, optim.make_optimizer(OPT, TOTAL_STEPS), 'lm').params
  a, b = token_batch(config.vocab_size, seed=1), token_batch(config.vocab_size, seed=2)
  both = {k: np.concatenate([a[k], b[k]]) for k in a}
  evaluate = jax.jit(functools.partial(sft.sft_eval_step, model=model))
  ma, mb, mab = evaluate(params, a), evaluate(params, b), evaluate(params, both)
  np.testing.assert_allclose((ma['sft/loss_sum'] + mb['sft/loss_sum']) /
                             (ma['sft/tokens'] + mb['sft/tokens']),
                             mab['sft/loss_sum'] / mab['sft/tokens'], rtol=1e-5)


@pytest.mark.slow
def test_overfits_one_batch_and_reports_lr():
  config = tiny()
  tx, step = setup(config)
  s, base = fresh_state(config, tx, 'lm'), jax.random.key(0)
  batch = token_batch(config.vocab_size)
  losses = []
  for i in range(30):
    s, metrics = step(s, batch, jax.random.fold_in(base, i))
    losses.append(float(metrics['sft/loss']))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(s.step) == 30
  np.testing.assert_allclose(metrics['learning/lr'], optim.schedule(OPT, TOTAL_STEPS)(29),
                             rtol=1e-6)
  assert float(metrics['learning/grad_norm']) > 0


@pytest.mark.parametrize('dropout', [0.0, 0.1])
@pytest.mark.slow
def test_dropout_follows_rng(dropout):
  config = tiny(resid_dropout=dropout)
  tx, step = setup(config)
  s, batch = fresh_state(config, tx, 'lm'), token_batch(config.vocab_size)
  loss_a = step(s, batch, jax.random.key(1))[1]['sft/loss']
  loss_b = step(s, batch, jax.random.key(2))[1]['sft/loss']
  assert (loss_a != loss_b) == (dropout > 0)
  # Stateless randomness: the same key gives the same loss.
  assert step(s, batch, jax.random.key(1))[1]['sft/loss'] == loss_a
