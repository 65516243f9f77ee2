"""sft_step, sft_eval_step: loss against a token loop, overfitting, dropout, sharding."""
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from rlhf_jax import config_lib, optim, sft, sharding, state

B, T = 8, 16
OPT = config_lib.optimizer_config(1e-3, schedule='cosine', final_lr_frac=0.1)
# Adam's first update is lr * g / (|g| + eps): with eps 1e-8, a 1e-10 reordering difference in a
# near-zero gradient moves that update by ~lr / 100, so sharded and unsharded steps would differ
# by far more than their gradients do. eps 1e-6 keeps the sharding comparison about gradients.
OPT.eps = 1e-6
TOTAL_STEPS = 100


def tiny(**changes):
  return config_lib.GEOMETRIES['tiny'].replace(n_layers=2, max_len=32, **changes)


def token_batch(vocab, seed=0, b=B, t=T):
  """Right-padded rows; loss on a random 'completion' suffix, never on the first token."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(t // 2, t + 1, b)
  prompt_lengths = rng.integers(1, t // 2, b)
  pos = np.arange(t)[None, :]
  mask = pos < lengths[:, None]
  tokens = np.where(mask, rng.integers(1, vocab, (b, t)), 0).astype(np.int32)
  loss_mask = mask & (pos >= prompt_lengths[:, None])
  return {'tokens': tokens, 'mask': mask, 'loss_mask': loss_mask,
          'segment_ids': mask.astype(np.int32), 'positions': np.where(mask, pos, 0)}


def fresh_state(config, tx, seed=0):
  params = nn.unbox(jax.jit(lambda r: state.init_params(config, 'lm', r))(jax.random.key(seed)))
  return state.create_train_state(params, tx)


@functools.cache
def setup(config):
  """(tx, jitted sft_step) per config, cached so that tests share compilations."""
  tx = optim.make_optimizer(OPT, TOTAL_STEPS)
  step = functools.partial(sft.sft_step, model=state.make_model(config, 'lm'), tx=tx,
                           lr_schedule=optim.schedule(OPT, TOTAL_STEPS))
  return tx, jax.jit(step)


def test_loss_matches_token_loop():
  config = tiny()
  tx, step = setup(config)
  s = fresh_state(config, tx)
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


def test_eval_sums_average_exactly_over_batches():
  config = tiny()
  model = state.make_model(config, 'lm')
  params = fresh_state(config, optim.make_optimizer(OPT, TOTAL_STEPS)).params
  a, b = token_batch(config.vocab_size, seed=1), token_batch(config.vocab_size, seed=2)
  both = {k: np.concatenate([a[k], b[k]]) for k in a}
  evaluate = jax.jit(functools.partial(sft.sft_eval_step, model=model))
  ma, mb, mab = evaluate(params, a), evaluate(params, b), evaluate(params, both)
  np.testing.assert_allclose((ma['sft/loss_sum'] + mb['sft/loss_sum']) /
                             (ma['sft/tokens'] + mb['sft/tokens']),
                             mab['sft/loss_sum'] / mab['sft/tokens'], rtol=1e-5)


def test_overfits_one_batch_and_reports_lr():
  config = tiny()
  tx, step = setup(config)
  s, batch, base = fresh_state(config, tx), token_batch(config.vocab_size), jax.random.key(0)
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
def test_dropout_follows_rng(dropout):
  config = tiny(resid_dropout=dropout)
  tx, step = setup(config)
  s, batch = fresh_state(config, tx), token_batch(config.vocab_size)
  loss_a = step(s, batch, jax.random.key(1))[1]['sft/loss']
  loss_b = step(s, batch, jax.random.key(2))[1]['sft/loss']
  assert (loss_a != loss_b) == (dropout > 0)
  # Stateless randomness: the same key gives the same loss.
  assert step(s, batch, jax.random.key(1))[1]['sft/loss'] == loss_a


def unsharded_case():
  """(config, tx, batch, rng, state, metrics) of one unsharded step (its compile is shared)."""
  # Dropout on: with jax's partitionable threefry the dropout mask does not depend on the layout.
  config = tiny(resid_dropout=0.1)
  tx, step = setup(config)[-2:]
  batch, rng = token_batch(config.vocab_size), jax.random.key(5)
  return (config, tx, batch, rng) + step(fresh_state(config, tx), batch, rng)


@pytest.mark.parametrize('shape', [(2, 2, 2), (8, 1, 1)])
def test_sharded_step_equals_unsharded(shape):
  config, tx, batch, rng, ref_state, ref_metrics = unsharded_case()
  mesh = sharding.make_mesh(dict(zip(sharding.AXES, shape)))
  s, shardings = state.create_sharded_train_state(config, 'lm', tx, mesh, jax.random.key(0))
  data = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
  replicated = sharding.replicated(mesh)
  sharded_step = jax.jit(
      functools.partial(sft.sft_step, model=state.make_model(config, 'lm'), tx=tx,
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
