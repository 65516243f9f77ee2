"""RL arithmetic for PPO on language models: masked statistics, KL-shaped rewards, GAE, controllers.

Every function is pure and array-level (no model calls, no I/O), has static shapes and is jittable.
Padding is carried by boolean masks; reductions are masked sums over explicit denominators, so a
padded row contributes nothing and values in padded positions (even NaN) never leak into results.

Formulas follow openai/lm-human-preferences (`train_policy.py`, `utils/core.py`) and InstructGPT
App. C.4; see `reference/instructgpt_facts.md` sections 1.5 and 2.3-2.5.
"""
from typing import Any

import jax
import jax.numpy as jnp


def masked_sum(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None,
               keepdims: bool = False) -> jax.Array:
  """Sum of `x` over the positions where `mask` is True.

  Uses `where` rather than `x * mask` so that NaN or inf in padded positions does not turn the sum
  into NaN (0 * nan = nan).

  Args:
    x: values, any shape.
    mask: bool (or 0/1) array broadcastable to `x.shape`.
    axis: axes to reduce; None reduces all.
    keepdims: keep reduced axes with size 1.

  Returns:
    The masked sum, shaped like `jnp.sum(x, axis, keepdims=keepdims)`.
  """
  return jnp.sum(jnp.where(mask, x, 0), axis=axis, keepdims=keepdims)


def masked_count(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None,
                 keepdims: bool = False) -> jax.Array:
  """Number of True positions of `mask` (broadcast to `x.shape`) along `axis`, as `x.dtype`."""
  full = jnp.broadcast_to(mask, x.shape)
  return jnp.sum(full, axis=axis, keepdims=keepdims).astype(jnp.result_type(x, jnp.float32))


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None,
                keepdims: bool = False) -> jax.Array:
  """Mean of `x` over the positions where `mask` is True.

  An all-False slice has mean 0 rather than NaN, so a fully padded row (e.g. a dropped sample
  kept for static shapes) cannot poison a batch statistic.

  Args:
    x: values, any shape.
    mask: bool (or 0/1) array broadcastable to `x.shape`.
    axis: axes to reduce; None reduces all.
    keepdims: keep reduced axes with size 1.

  Returns:
    masked_sum / max(count, 1), shaped like `jnp.mean(x, axis, keepdims=keepdims)`.
  """
  count = masked_count(x, mask, axis, keepdims)
  return masked_sum(x, mask, axis, keepdims) / jnp.maximum(count, 1)


def masked_var(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None,
               keepdims: bool = False) -> jax.Array:
  """Population variance (divide by n, like `tf.nn.moments` and `jnp.var`) over masked positions."""
  mean = masked_mean(x, mask, axis, keepdims=True)
  var = masked_mean(jnp.square(x - mean), mask, axis, keepdims=True)
  return var if keepdims else jnp.squeeze(var, axis=axis)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """Normalises `x` to unit variance over all masked positions (lm-human-preferences `whiten`).

  (x - mean) * rsqrt(var + eps); with `shift_mean=False` the mean is added back, so only the scale
  changes (how lm-human-preferences whitens rewards, keeping their sign and average).

  Args:
    x: [B, T] values (any shape works; statistics are over all masked entries).
    mask: [B, T] bool.
    shift_mean: whether the result has mean 0 (True) or keeps the mean of `x` (False).
    eps: added to the variance before the rsqrt.

  Returns:
    [B, T] whitened values, 0 at padded positions.
  """
  mean = masked_mean(x, mask)
  var = masked_var(x, mask)
  whitened = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask, whitened, 0)


def last_token_index(mask: jax.Array) -> jax.Array:
  """Index of the last True position of each row.

  Works for right-padded, left-padded and fully real rows alike, since it searches from the end.

  Args:
    mask: [B, T] bool.

  Returns:
    [B] int32; T - 1 for a row with no True position (callers mask such rows).
  """
  t = mask.shape[-1]
  return (t - 1 - jnp.argmax(mask[..., ::-1], axis=-1)).astype(jnp.int32)


def kl_shaped_rewards(logprobs: jax.Array, ref_logprobs: jax.Array, scores: jax.Array,
                      mask: jax.Array, kl_coef: float | jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-token rewards with the KL penalty to the reference policy and the RM score at the end.

  r_t = -kl_coef * (log pi(a_t) - log pi_ref(a_t)) on real tokens, plus `scores` on the last real
  token of each row (InstructGPT eq. 2 as implemented by lm-human-preferences `compute_rewards`).
  The KL term is the sampled log-ratio, so single tokens can be negative.

  Args:
    logprobs: [B, T] log-probs of the sampled tokens under the policy.
    ref_logprobs: [B, T] log-probs of the same tokens under the reference (SFT) policy.
    scores: [B] reward-model scores of the responses.
    mask: [B, T] bool, True on response tokens.
    kl_coef: beta (scalar).

  Returns:
    (rewards [B, T], kl [B, T]), both 0 at padded positions. Sum `kl` over T for the per-sequence
    KL that `objective/kl` reports and the adaptive controller reads.
  """
  kl = jnp.where(mask, logprobs - ref_logprobs, 0)
  last = jax.nn.one_hot(last_token_index(mask), mask.shape[-1], dtype=bool) & mask
  rewards = -kl_coef * kl + jnp.where(last, scores[:, None], 0)
  return rewards, kl


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation (Schulman et al. 2016) with a reverse scan over time.

  delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.
  The episode ends after the last real token: there V_{t+1} = 0 and A_{t+1} = 0 (the bandit
  environment of InstructGPT section 3.5 terminates after the response). A real token whose next
  position is padding is treated as the end, which covers right padding; leading padding gets 0.

  Args:
    rewards: [B, T] per-token rewards (e.g. from `kl_shaped_rewards`).
    values: [B, T] value estimates V(s_t).
    mask: [B, T] bool, True on real (response) tokens.
    gamma: discount (InstructGPT: 1, "no discount").
    lam: GAE lambda.

  Returns:
    (advantages [B, T], returns [B, T]); returns = advantages + values. Both 0 at padded positions.
  """
  def step(carry, xs):
    next_value, next_adv = carry
    r, v, m = xs
    delta = r + gamma * next_value - v
    adv = jnp.where(m, delta + gamma * lam * next_adv, 0)
    # A padded position passes on V = 0 and A = 0, which is what ends the episode at t - 1.
    return (jnp.where(m, v, 0), adv), adv

  zeros = jnp.zeros(rewards.shape[:1], jnp.result_type(rewards, values))
  # Time-major so that the scan walks over T.
  xs = (rewards.T, values.T, mask.T)
  _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
  advantages = adv.T
  returns = jnp.where(mask, advantages + values, 0)
  return advantages, returns


def adaptive_kl_coef(coef: float | jax.Array, current_kl: float | jax.Array, target: float,
                     horizon: float, n_steps: int | jax.Array) -> jax.Array:
  """One update of the lm-human-preferences adaptive KL controller (Ziegler et al. 2019).

  err = clip(current_kl / target - 1, -0.2, 0.2);  coef <- coef * (1 + err * n_steps / horizon).
  The fixed controller (InstructGPT: beta = 0.02) is simply never calling this.

  Args:
    coef: current KL coefficient beta (scalar).
    current_kl: mean over the rollout batch of the per-sequence summed KL (scalar).
    target: KL target.
    horizon: controller horizon, in episodes.
    n_steps: episodes since the last update (the rollout batch size).

  Returns:
    The new coefficient (scalar).
  """
  err = jnp.clip(current_kl / target - 1, -0.2, 0.2)
  return coef * (1 + err * n_steps / horizon)


def ema_update(ema_tree: Any, tree: Any, decay: float | jax.Array) -> Any:
  """Exponential moving average of parameters: decay * ema + (1 - decay) * params, leafwise."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema_tree, tree)


def var_explained(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
  """Fraction of the variance of `returns` that `values` explain: 1 - Var[R - V] / Var[R].

  1 is a perfect value function, 0 is no better than a constant, negative is worse than a
  constant. NaN when the returns have no variance (nothing to explain), as in stable-baselines3.

  Args:
    values: [B, T] value predictions.
    returns: [B, T] return targets.
    mask: [B, T] bool.

  Returns:
    Scalar.
  """
  var_returns = masked_var(returns, mask)
  ratio = masked_var(returns - values, mask) / var_returns
  return jnp.where(var_returns == 0, jnp.nan, 1 - ratio)
