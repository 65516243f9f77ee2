"""losses against slow references, hand-worked examples and gradient checks."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses

# float32 arithmetic on O(1) values over <= a few hundred elements: reordered sums differ by
# ~1e-6 relative, so 1e-5 passes every correct implementation and fails any formula error.
RTOL = 1e-5
ATOL = 1e-5


def _log_softmax_np(logits):
  z = logits.astype(np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_token_logprobs_match_loop(rng, temperature):
  b, t, v = 2, 3, 11
  logits = (3 * rng.normal(size=(b, t, v))).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t))
  logp = _log_softmax_np(logits / temperature)
  expected = [[logp[i, j, targets[i, j]] for j in range(t)] for i in range(b)]
  out = jax.jit(losses.token_logprobs)(logits, targets, temperature)
  np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


def test_token_logprobs_upcasts_bf16():
  logits = jnp.array([[[0.0, 10.0, -10.0]]], jnp.bfloat16)
  out = losses.token_logprobs(logits, jnp.array([[1]]))
  assert out.dtype == jnp.float32


def test_entropy_from_logits(rng):
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
  logp = _log_softmax_np(logits)
  expected = -(np.exp(logp) * logp).sum(-1)
  np.testing.assert_allclose(losses.entropy_from_logits(logits), expected, rtol=RTOL, atol=ATOL)
  # Uniform logits have the maximal entropy log(V).
  np.testing.assert_allclose(losses.entropy_from_logits(jnp.zeros((1, 1, 7))), [[math.log(7)]],
                             rtol=RTOL)


def test_token_nll_sum_count_and_accumulation(rng):
  b, t, v = 4, 5, 9
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  targets = rng.integers(0, v, size=(b, t))
  mask = np.arange(t)[None, :] < np.array([5, 2, 0, 4])[:, None]
  logp = _log_softmax_np(logits)
  expected = -sum(logp[i, j, targets[i, j]] for i in range(b) for j in range(t) if mask[i, j])
  token_nll = jax.jit(losses.token_nll)
  nll_sum, count = token_nll(logits, targets, mask)
  np.testing.assert_allclose(nll_sum, expected, rtol=RTOL, atol=ATOL)
  assert float(count) == 11
  # Two micro-batches of unequal token counts: sums and counts add up to the full batch exactly,
  # which a mean of per-micro-batch means would not.
  s1, c1 = token_nll(logits[:2], targets[:2], mask[:2])
  s2, c2 = token_nll(logits[2:], targets[2:], mask[2:])
  np.testing.assert_allclose((s1 + s2) / (c1 + c2), expected / 11, rtol=RTOL, atol=ATOL)


def _ranking_reference(rewards, ranks, valid):
  """Pair-by-pair loop: mean over each prompt's ranked pairs, then over prompts with pairs."""
  prompt_losses, n_pairs, n_correct = [], 0, 0
  for r, k, m in zip(rewards, ranks, valid):
    pair_losses = []
    for w, l in itertools.permutations(range(len(r)), 2):
      if m[w] and m[l] and k[w] < k[l]:
        margin = float(r[w]) - float(r[l])
        pair_losses.append(math.log1p(math.exp(-margin)))  # -log sigmoid(margin)
        n_correct += margin > 0
    if pair_losses:
      prompt_losses.append(sum(pair_losses) / len(pair_losses))
    n_pairs += len(pair_losses)
  return sum(prompt_losses) / len(prompt_losses), n_correct / n_pairs, n_pairs, len(prompt_losses)


def test_ranking_loss_matches_pairwise_loop_with_ties_and_padding(rng):
  b, k_max = 6, 9
  rewards = rng.normal(size=(b, k_max)).astype(np.float32)
  ks = [9, 4, 6, 5, 4, 7]
  valid = np.arange(k_max)[None, :] < np.array(ks)[:, None]
  ranks = rng.integers(0, 4, size=(b, k_max))  # 4 rank levels over up to 9 completions: many ties
  ranks[4, :4] = 2  # a prompt whose completions all tie: no pairs, excluded from the mean
  rewards = np.where(valid, rewards, np.nan).astype(np.float32)  # padding must not leak in
  loss, metrics = jax.jit(losses.ranking_loss)(rewards, ranks, valid)
  ref_loss, ref_acc, ref_pairs, ref_prompts = _ranking_reference(rewards, ranks, valid)
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(metrics['accuracy'], ref_acc, rtol=RTOL, atol=ATOL)
  assert int(metrics['pairs']) == ref_pairs
  assert int(metrics['prompts']) == ref_prompts == b - 1


def test_ranking_loss_accuracy_and_value_on_crafted_inputs():
  # Prompt 0 (K=3, ranks 0 < 1 < 2): rewards 3, 2, 1 order all 3 pairs correctly.
  # Prompt 1 (K=2 padded to 3, ranks 0 < 1): rewards 0, 1 order its one pair wrongly.
  # Accuracy counts pairs over the batch: 3 of 4. Loss: prompt 0 averages -log sig over margins
  # 1, 2, 1; prompt 1 has margin -1; then the two prompts are averaged with equal weight.
  rewards = jnp.array([[3.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
  ranks = jnp.array([[0, 1, 2], [0, 1, 0]])
  valid = jnp.array([[True, True, True], [True, True, False]])
  loss, metrics = jax.jit(losses.ranking_loss)(rewards, ranks, valid)
  nls = lambda m: math.log1p(math.exp(-m))
  expected = 0.5 * ((nls(1) + nls(2) + nls(1)) / 3 + nls(-1))
  np.testing.assert_allclose(loss, expected, rtol=RTOL)
  np.testing.assert_allclose(metrics['accuracy'], 0.75, rtol=RTOL)
  assert int(metrics['pairs']) == 4
  # A tie in reward is not a correct prediction.
  _, tied = jax.jit(losses.ranking_loss)(jnp.zeros((1, 2)), jnp.array([[0, 1]]),
                                         jnp.ones((1, 2), bool))
  assert float(tied['accuracy']) == 0.0


def test_ranking_loss_gradient_is_finite_and_zero_on_padding():
  rewards = jnp.array([[1.0, -1.0, jnp.nan]])
  ranks = jnp.array([[1, 0, 0]])
  valid = jnp.array([[True, True, False]])
  grad = jax.jit(jax.grad(lambda r: losses.ranking_loss(r, ranks, valid)[0]))(rewards)
  # One pair (w=1, l=0), margin -2: d/dr_w of -log sig(r_w - r_l) = -sigmoid(-margin).
  s = 1 / (1 + math.exp(-2.0))
  np.testing.assert_allclose(grad, [[s, -s, 0.0]], rtol=RTOL, atol=ATOL)


def test_ranking_loss_explicit_prompt_denominator_accumulates():
  rewards = jnp.array([[1.0, 0.0], [0.5, 2.0], [0.0, 0.0]])
  ranks = jnp.array([[0, 1], [0, 1], [0, 0]])  # the last prompt is a full tie: no pairs
  valid = jnp.ones((3, 2), bool)
  ranking_loss = jax.jit(losses.ranking_loss)
  full, _ = ranking_loss(rewards, ranks, valid)
  halves = [ranking_loss(rewards[s], ranks[s], valid[s], num_prompts=2.0)[0]
            for s in (slice(0, 1), slice(1, 3))]
  np.testing.assert_allclose(sum(halves), full, rtol=RTOL)


def _ppo_example():
  """Four tokens, the last one padding (with values that would change every result)."""
  log = math.log
  logprobs = jnp.array([[log(1.5), log(0.5), log(0.5), 9.0]])
  old = jnp.zeros((1, 4))
  adv = jnp.array([[2.0, 1.0, -1.0, 100.0]])
  mask = jnp.array([[True, True, True, False]])
  return logprobs, old, adv, mask


def test_ppo_policy_loss_hand_computed():
  logprobs, old, adv, mask = _ppo_example()
  loss, metrics = jax.jit(losses.ppo_policy_loss)(logprobs, old, adv, mask, clip=0.2)
  # ratio 1.5, A  2: max(-3.0, -2*1.2 = -2.4) = -2.4   clipped term wins
  # ratio 0.5, A  1: max(-0.5, -1*0.8 = -0.8) = -0.5   unclipped
  # ratio 0.5, A -1: max( 0.5,  1*0.8 =  0.8) =  0.8   clipped term wins
  # mean over 3 real tokens: (-2.4 - 0.5 + 0.8) / 3 = -0.7; clipfrac 2/3.
  np.testing.assert_allclose(loss, -0.7, rtol=RTOL)
  np.testing.assert_allclose(metrics['clipfrac'], 2 / 3, rtol=RTOL)
  approxkl = 0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 3
  np.testing.assert_allclose(metrics['approxkl'], approxkl, rtol=RTOL)


def test_ppo_policy_loss_gradient_flows_only_through_unclipped_tokens():
  logprobs, old, adv, mask = _ppo_example()
  grad = jax.grad(lambda lp: losses.ppo_policy_loss(lp, old, adv, mask)[0])(logprobs)
  # Only token 2 is unclipped: d/dlogp of -A * exp(logp - old) / 3 = -1 * 0.5 / 3.
  np.testing.assert_allclose(grad, [[0.0, -0.5 / 3, 0.0, 0.0]], rtol=RTOL, atol=ATOL)


def test_value_loss_hand_computed_and_gradient():
  old = jnp.array([[0.5, 0.5, 0.0, 0.0]])
  returns = jnp.array([[2.0, 0.0, 1.0, 50.0]])
  mask = jnp.array([[True, True, True, False]])
  values = jnp.array([[1.0, 0.4, 2.0, -50.0]])
  loss, metrics = jax.jit(losses.value_loss)(values, old, returns, mask, clip=0.2)
  # v 1.0, old 0.5, R 2: (1-2)^2 = 1,   clip to 0.7: (0.7-2)^2 = 1.69 -> 1.69  clipped wins
  # v 0.4, old 0.5, R 0: 0.16,          inside the range: 0.16         -> 0.16  (a tie, not clipped)
  # v 2.0, old 0.0, R 1: (2-1)^2 = 1,   clip to 0.2: 0.64              -> 1
  # 0.5 * (1.69 + 0.16 + 1) / 3 = 0.475; clipfrac 1/3.
  np.testing.assert_allclose(loss, 0.475, rtol=RTOL)
  np.testing.assert_allclose(metrics['clipfrac'], 1 / 3, rtol=RTOL)
  grad = jax.grad(lambda v: losses.value_loss(v, old, returns, mask)[0])(values)
  # Token 1's larger term is constant in v; the others give (v - R) / 3.
  np.testing.assert_allclose(grad, [[0.0, 0.4 / 3, 1 / 3, 0.0]], rtol=RTOL, atol=ATOL)


def test_ppo_losses_explicit_token_denominator_accumulates(rng):
  b, t = 4, 6
  logprobs, old, adv, values, old_v, ret = (
      rng.normal(size=(b, t)).astype(np.float32) * 0.3 for _ in range(6))
  mask = np.arange(t)[None, :] < np.array([6, 1, 3, 5])[:, None]
  n = float(mask.sum())
  for fn, args in ((losses.ppo_policy_loss, (logprobs, old, adv)),
                   (losses.value_loss, (values, old_v, ret))):
    fn = jax.jit(fn)
    full, full_m = fn(*args, mask)
    parts = [fn(*(a[s] for a in args), mask[s], num_tokens=n) for s in (slice(0, 1), slice(1, 4))]
    np.testing.assert_allclose(parts[0][0] + parts[1][0], full, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(parts[0][1]['clipfrac'] + parts[1][1]['clipfrac'],
                               full_m['clipfrac'], rtol=RTOL, atol=ATOL)
