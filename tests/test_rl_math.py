"""rl_math against slow Python-loop references and hand-worked formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import rl_math

# float32 arithmetic on O(1) values over <= a few hundred elements: reordered sums differ by
# ~1e-6 relative, so 1e-5 passes every correct implementation and fails any formula error.
RTOL = 1e-5
ATOL = 1e-5


def _mask_from_lengths(lengths, t, left=False):
  """[B, T] bool with `lengths[b]` True entries, right-padded (or left-padded)."""
  mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
  return mask[:, ::-1].copy() if left else mask


def _segment(mask_row):
  """(start, end) of the contiguous run of True in a row."""
  idx = np.flatnonzero(mask_row)
  return int(idx[0]), int(idx[-1]) + 1


def _gae_reference(rewards, values, mask, gamma, lam):
  """Per-row double loop as in lm-human-preferences: V after the last real token is 0."""
  adv = np.zeros_like(rewards, dtype=np.float64)
  for b in range(rewards.shape[0]):
    if not mask[b].any():
      continue
    start, end = _segment(mask[b])
    last_gae = 0.0
    for t in reversed(range(start, end)):
      next_value = values[b, t + 1] if t + 1 < end else 0.0
      delta = rewards[b, t] + gamma * next_value - values[b, t]
      last_gae = delta + gamma * lam * last_gae
      adv[b, t] = last_gae
  returns = np.where(mask, adv + values, 0.0)
  return adv, returns


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def test_masked_stats_match_numpy_on_selected_entries(rng):
  x = rng.normal(size=(4, 7)).astype(np.float32)
  mask = _mask_from_lengths([7, 3, 1, 5], 7)
  x_nan = np.where(mask, x, np.nan).astype(np.float32)  # padding must never leak in
  sel = x[mask]
  np.testing.assert_allclose(rl_math.masked_sum(x_nan, mask), sel.sum(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(rl_math.masked_mean(x_nan, mask), sel.mean(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(rl_math.masked_var(x_nan, mask), sel.var(), rtol=RTOL, atol=ATOL)
  rows_mean = [x[b][mask[b]].mean() for b in range(4)]
  rows_var = [x[b][mask[b]].var() for b in range(4)]
  np.testing.assert_allclose(rl_math.masked_mean(x_nan, mask, axis=1), rows_mean, rtol=RTOL,
                             atol=ATOL)
  np.testing.assert_allclose(rl_math.masked_var(x_nan, mask, axis=1), rows_var, rtol=RTOL,
                             atol=ATOL)
  assert rl_math.masked_var(x, mask, axis=1, keepdims=True).shape == (4, 1)


def test_masked_mean_of_empty_row_is_zero():
  x = jnp.ones((2, 3))
  mask = jnp.array([[True, True, False], [False, False, False]])
  np.testing.assert_array_equal(rl_math.masked_mean(x, mask, axis=1), [1.0, 0.0])


@pytest.mark.parametrize('shift_mean', [True, False])
def test_masked_whiten_matches_formula(rng, shift_mean):
  x = (3.0 + 2.0 * rng.normal(size=(5, 6))).astype(np.float32)
  mask = _mask_from_lengths([6, 2, 4, 1, 6], 6)
  sel = x[mask].astype(np.float64)
  expected = (x - sel.mean()) / np.sqrt(sel.var() + 1e-8)
  if not shift_mean:
    expected += sel.mean()
  expected = np.where(mask, expected, 0.0)
  out = jax.jit(rl_math.masked_whiten, static_argnames='shift_mean')(x, mask,
                                                                     shift_mean=shift_mean)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(out)[mask].std(), 1.0, rtol=RTOL, atol=ATOL)


def test_last_token_index_right_left_full_and_middle():
  mask = np.array([
      [1, 1, 1, 0, 0],  # right-padded
      [0, 0, 1, 1, 1],  # left-padded
      [1, 1, 1, 1, 1],  # no padding
      [0, 1, 1, 0, 0],  # prompt before, padding after
      [1, 0, 0, 0, 0],
  ], dtype=bool)
  np.testing.assert_array_equal(rl_math.last_token_index(mask), [2, 4, 4, 2, 0])


def test_kl_shaped_rewards_match_loop(rng):
  b, t, beta = 5, 6, 0.02
  logp = rng.normal(size=(b, t)).astype(np.float32)
  ref = rng.normal(size=(b, t)).astype(np.float32)
  scores = rng.normal(size=(b,)).astype(np.float32)
  # The last row is empty (a dropped sample kept for static shapes): it must get no score.
  mask = np.concatenate([_mask_from_lengths([6, 3, 1], t), _mask_from_lengths([4], t, left=True),
                         np.zeros((1, t), bool)])
  expected_r = np.zeros((b, t))
  expected_kl = np.zeros((b, t))
  for i in range(b):
    end = _segment(mask[i])[1] if mask[i].any() else None
    for j in range(t):
      if mask[i, j]:
        expected_kl[i, j] = logp[i, j] - ref[i, j]
        expected_r[i, j] = -beta * expected_kl[i, j] + (scores[i] if j == end - 1 else 0.0)
  rewards, kl = jax.jit(rl_math.kl_shaped_rewards)(logp, ref, scores, mask, beta)
  np.testing.assert_allclose(rewards, expected_r, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(kl, expected_kl, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('gamma,lam', [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_double_loop(rng, gamma, lam):
  b, t = 6, 9
  rewards = rng.normal(size=(b, t)).astype(np.float32)
  values = rng.normal(size=(b, t)).astype(np.float32)
  mask = np.concatenate([
      _mask_from_lengths([9, 5, 1, 3], t),           # first row has no padding
      _mask_from_lengths([4], t, left=True),
      np.zeros((1, t), bool),                        # a dropped sample kept for static shapes
  ])
  adv, ret = jax.jit(rl_math.gae, static_argnums=(3, 4))(rewards, values, mask, gamma, lam)
  ref_adv, ref_ret = _gae_reference(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, ref_adv, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(ret, ref_ret, rtol=RTOL, atol=ATOL)


def test_gae_undiscounted_returns_are_reward_to_go(rng):
  # gamma = lam = 1: A_t + V_t telescopes to the sum of the remaining rewards of the episode.
  rewards = rng.normal(size=(2, 5)).astype(np.float32)
  values = rng.normal(size=(2, 5)).astype(np.float32)
  mask = _mask_from_lengths([5, 3], 5)
  _, ret = rl_math.gae(rewards, values, mask, 1.0, 1.0)
  to_go = np.where(mask, np.cumsum(np.where(mask, rewards, 0)[:, ::-1], axis=1)[:, ::-1], 0)
  np.testing.assert_allclose(ret, to_go, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('kl,expected_err', [(6.0, 0.0), (6.6, 0.1), (100.0, 0.2), (0.0, -0.2)])
def test_adaptive_kl_coef(kl, expected_err):
  coef, target, horizon, n = 0.15, 6.0, 10000.0, 512
  new = jax.jit(rl_math.adaptive_kl_coef)(coef, kl, target, horizon, n)
  np.testing.assert_allclose(new, coef * (1 + expected_err * n / horizon), rtol=RTOL)


def test_ema_update_on_a_tree():
  ema = {'w': jnp.array([1.0, 2.0]), 'b': {'c': jnp.array(4.0)}}
  params = {'w': jnp.array([3.0, 0.0]), 'b': {'c': jnp.array(-4.0)}}
  d = 0.992
  out = rl_math.ema_update(ema, params, d)
  np.testing.assert_allclose(out['w'], [d * 1 + (1 - d) * 3, d * 2], rtol=RTOL)
  np.testing.assert_allclose(out['b']['c'], d * 4 - (1 - d) * 4, rtol=RTOL)
  np.testing.assert_allclose(rl_math.ema_update(ema, params, 0.5)['w'], [2.0, 1.0], rtol=RTOL)


def test_var_explained(rng):
  returns = rng.normal(size=(3, 4)).astype(np.float32)
  mask = _mask_from_lengths([4, 2, 3], 4)
  garbage = np.where(mask, 0.0, 1e6).astype(np.float32)  # padding must not count
  perfect = rl_math.var_explained(returns + garbage, returns, mask)
  constant = rl_math.var_explained(np.full_like(returns, 0.7) + garbage, returns, mask)
  np.testing.assert_allclose(perfect, 1.0, atol=ATOL)
  np.testing.assert_allclose(constant, 0.0, atol=ATOL)
  sel_r, sel_v = returns[mask], 0.5 * returns[mask]
  np.testing.assert_allclose(rl_math.var_explained(0.5 * returns, returns, mask),
                             1 - (sel_r - sel_v).var() / sel_r.var(), rtol=RTOL, atol=ATOL)
  assert np.isnan(rl_math.var_explained(returns, np.ones_like(returns), mask))
