"""Losses at the array level: token log-probs and NLL, the K-way ranking loss, PPO policy and value.

Callers run the models and pass logits, rewards or values in; nothing here calls `model.apply`.
Padding is carried by boolean masks. Mean losses take an optional explicit denominator
(`num_tokens`, `num_prompts`): when a minibatch is split into micro-batches for gradient
accumulation, passing the whole minibatch's count makes the micro-batch losses sum exactly to the
minibatch mean. Logits are upcast to float32 before any softmax, as bf16 log-probs are too coarse
for PPO ratios.
"""
import jax
import jax.numpy as jnp

from rlhf_jax import rl_math

Metrics = dict[str, jax.Array]


def token_logprobs(logits: jax.Array, targets: jax.Array,
                   temperature: float | jax.Array = 1.0) -> jax.Array:
  """Log-probabilities of `targets` under softmax(logits / temperature).

  Computed as logit[target] - logsumexp(logits), which never materialises a second [B, T, V]
  array of log-probs. PPO must score tokens with the temperature they were sampled with
  (lm-human-preferences divides by it for the policy and the reference alike).

  Args:
    logits: [B, T, V] logits predicting `targets` (already shifted: position t predicts targets[t]).
    targets: [B, T] int token ids.
    temperature: sampling temperature.

  Returns:
    [B, T] float32 log-probs.
  """
  logits = logits.astype(jnp.float32) / temperature
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def entropy_from_logits(logits: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) along the vocabulary: logsumexp(l) - sum(softmax(l) * l).

  Args:
    logits: [B, T, V].

  Returns:
    [B, T] float32 entropies, in nats.
  """
  logits = logits.astype(jnp.float32)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits,
                                                     axis=-1)


def token_nll(logits: jax.Array, targets: jax.Array,
              mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed next-token negative log-likelihood and the number of tokens it covers.

  Returns the sum and the count rather than their ratio so that gradient accumulation over
  micro-batches (and the ptx term of PPO-ptx) can divide by the true total token count.

  Args:
    logits: [B, T, V] logits predicting `targets`.
    targets: [B, T] int token ids.
    mask: [B, T] bool, True on tokens that count (e.g. completion tokens for SFT).

  Returns:
    (nll_sum, token_count): float32 scalars.
  """
  nll = -token_logprobs(logits, targets)
  return rl_math.masked_sum(nll, mask), rl_math.masked_count(nll, mask)


def ranking_loss(rewards: jax.Array, ranks: jax.Array, valid: jax.Array,
                 num_prompts: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
  """InstructGPT eq. (1): pairwise -log sigmoid(r_w - r_l) over all ranked pairs of each prompt.

  All C(K, 2) comparisons of one prompt form one batch element, so the RM runs once per
  completion, not once per pair (paper section 3.5). For each prompt the loss averages over its
  ordered pairs (w, l) of valid completions with rank_w < rank_l (ties give no pair, "ties were
  dropped"), then averages over prompts that have at least one pair.

  Args:
    rewards: [B, K] scalar RM outputs, K padded to K_max.
    ranks: [B, K] int, 0 = best; equal ranks are ties.
    valid: [B, K] bool, False on padding completions.
    num_prompts: denominator of the mean over prompts; default the number of prompts in this batch
      with at least one pair.

  Returns:
    (loss, metrics) with metrics 'accuracy' (fraction of all pairs of the batch with r_w > r_l),
    'pairs' (number of pairs) and 'prompts' (number of prompts with at least one pair).
  """
  # Padded completions may hold any value (even NaN); zeroing them first keeps both the loss and
  # its gradient finite, since where() alone would still multiply a NaN by a zero cotangent.
  rewards = jnp.where(valid, rewards.astype(jnp.float32), 0)
  # pair[b, w, l]: completion w beats completion l.
  pair = valid[:, :, None] & valid[:, None, :] & (ranks[:, :, None] < ranks[:, None, :])
  margin = rewards[:, :, None] - rewards[:, None, :]  # [B, K, K] r_w - r_l
  pair_loss = -jax.nn.log_sigmoid(margin)
  pairs_per_prompt = jnp.sum(pair, axis=(1, 2)).astype(jnp.float32)
  prompt_loss = rl_math.masked_sum(pair_loss, pair, axis=(1, 2)) / jnp.maximum(pairs_per_prompt, 1)
  has_pairs = pairs_per_prompt > 0
  n_prompts = jnp.sum(has_pairs).astype(jnp.float32)
  if num_prompts is None:
    num_prompts = jnp.maximum(n_prompts, 1)
  loss = rl_math.masked_sum(prompt_loss, has_pairs) / num_prompts
  n_pairs = jnp.sum(pairs_per_prompt)
  accuracy = jnp.sum(pair & (margin > 0)) / jnp.maximum(n_pairs, 1)
  return loss, {'accuracy': accuracy, 'pairs': n_pairs, 'prompts': n_prompts}


def ppo_policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                    mask: jax.Array, clip: float = 0.2,
                    num_tokens: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
  """PPO clipped surrogate (Schulman et al. 2017) as a per-token masked mean.

  loss = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - clip, 1 + clip)), rho_t = exp(logp - old).

  Args:
    logprobs: [B, T] log-probs of the taken tokens under the current policy (differentiated).
    old_logprobs: [B, T] log-probs at rollout time (treated as constants).
    advantages: [B, T] advantages (treated as constants).
    mask: [B, T] bool, True on response tokens.
    clip: the clip ratio epsilon (InstructGPT: 0.2).
    num_tokens: denominator of the means; default mask.sum().

  Returns:
    (loss, metrics): 'clipfrac' is the fraction of tokens where the clipped term is the larger one
    (its gradient is then 0); 'approxkl' is 0.5 * mean((logp - old)^2), as in lm-human-preferences.
  """
  old_logprobs = jax.lax.stop_gradient(old_logprobs)
  advantages = jax.lax.stop_gradient(advantages)
  mean = _mean_fn(mask, num_tokens)
  log_ratio = jnp.where(mask, logprobs - old_logprobs, 0)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1 - clip, 1 + clip)
  loss = mean(jnp.maximum(unclipped, clipped))
  metrics = {
      'clipfrac': mean((clipped > unclipped).astype(jnp.float32)),
      'approxkl': 0.5 * mean(jnp.square(log_ratio)),
  }
  return loss, metrics


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip: float = 0.2,
               num_tokens: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
  """Clipped value loss: 0.5 * mean_t max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2).

  The clip keeps the value function within `clip` of its rollout-time prediction, as in
  lm-human-preferences and DeepSpeed-Chat (`cliprange_value` 0.2).

  Args:
    values: [B, T] current value predictions (differentiated).
    old_values: [B, T] value predictions at rollout time (treated as constants).
    returns: [B, T] GAE returns (treated as constants).
    mask: [B, T] bool, True on response tokens.
    clip: the value clip range.
    num_tokens: denominator of the means; default mask.sum().

  Returns:
    (loss, metrics): 'clipfrac' is the fraction of tokens where the clipped error is the larger one.
  """
  old_values = jax.lax.stop_gradient(old_values)
  returns = jax.lax.stop_gradient(returns)
  mean = _mean_fn(mask, num_tokens)
  clipped_values = jnp.clip(values, old_values - clip, old_values + clip)
  err = jnp.square(values - returns)
  err_clipped = jnp.square(clipped_values - returns)
  loss = 0.5 * mean(jnp.maximum(err, err_clipped))
  return loss, {'clipfrac': mean((err_clipped > err).astype(jnp.float32))}


def _mean_fn(mask: jax.Array, num_tokens: jax.Array | None):
  """A masked mean over all axes with a fixed denominator (default: the mask's count)."""
  if num_tokens is None:
    return lambda x: rl_math.masked_mean(x, mask)
  return lambda x: rl_math.masked_sum(x, mask) / num_tokens
