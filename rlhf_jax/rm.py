"""Reward-model step, evaluation and scoring (InstructGPT section 3.5, App. C.2).

One batch element is one prompt with its K ranked completions (K padded to K_max, `valid`
marking real ones). Each completion runs through the model once, as its own row; the loss then
compares all C(K, 2) ranked pairs of a prompt from those K rewards (`losses.ranking_loss`).

After training, the RM is shifted by a bias so that labeler demonstrations score 0 on average
(paper section 3.5, following Stiennon et al. 2020): `normalisation_bias` computes it from
unshifted demonstration scores, and `reward_scores(..., bias=...)` applies it wherever the RM
scores (PPO rewards, SFT model selection, evaluation).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import losses
from rlhf_jax.models import last_token_value
from rlhf_jax.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _rewards(params, tokens: jax.Array, mask: jax.Array, model, deterministic: bool,
             rng: jax.Array | None) -> jax.Array:
  """Unshifted reward at each sequence's last real token: tokens, mask [..., T] -> [...]."""
  lead, t = tokens.shape[:-1], tokens.shape[-1]
  flat_mask = mask.reshape(-1, t)  # [N, T]
  rngs = None if deterministic else {'dropout': rng}
  values = model.apply({'params': params}, tokens.reshape(-1, t), flat_mask,
                       deterministic=deterministic, rngs=rngs)  # [N, T]
  return last_token_value(values, flat_mask).reshape(lead)


def rm_step(state: TrainState, batch: Batch, rng: jax.Array, *, model,
            tx: optax.GradientTransformation,
            lr_schedule: optax.Schedule | None = None) -> tuple[TrainState, Metrics]:
  """One optimiser update on the K-way ranking loss of `batch` (paper eq. 1).

  Args:
    state: the scalar model's TrainState.
    batch: a RankingBatch: tokens [B, K, T] int32, mask [B, K, T] bool, ranks [B, K] int32
      (0 = best, equal = tie), valid [B, K] bool.
    rng: this step's key (the loop passes fold_in(base, step)); used only for dropout.
    model: a `ScalarModel`.
    tx: the optimiser that built `state.opt_state`.
    lr_schedule: when given, the learning rate of this update is reported.

  Returns:
    (new_state, metrics): 'rm/loss', 'rm/accuracy' (fraction of ranked pairs ordered right),
    'rm/pairs', 'rm/prompts' (prompts with at least one pair), 'learning/grad_norm' and, with
    `lr_schedule`, 'learning/lr'.
  """
  def loss_fn(params):
    rewards = _rewards(params, batch['tokens'], batch['mask'], model, False, rng)  # [B, K]
    return losses.ranking_loss(rewards, batch['ranks'], batch['valid'])

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {'rm/loss': loss, 'rm/accuracy': stats['accuracy'], 'rm/pairs': stats['pairs'],
             'rm/prompts': stats['prompts'], 'learning/grad_norm': optax.tree.norm(grads)}
  if lr_schedule is not None:
    # optax's schedule count equals state.step: both count the updates applied before this one.
    metrics['learning/lr'] = jnp.asarray(lr_schedule(state.step), jnp.float32)
  return state.apply_gradients(grads, tx), metrics


def rm_eval_step(params, batch: Batch, *, model) -> Metrics:
  """Summed ranking loss and pair counts of one batch, dropout off.

  Sum each metric over all batches, then: loss = 'rm/loss_sum' / 'rm/prompts' (the mean over
  prompts of each prompt's mean pair loss, as in training) and accuracy = 'rm/correct' /
  'rm/pairs', exact however prompts fall into batches.

  Args:
    params: the scalar model's parameters.
    batch: a RankingBatch (see `rm_step`).
    model: a `ScalarModel`.

  Returns:
    {'rm/loss_sum', 'rm/prompts', 'rm/correct', 'rm/pairs'}: float32 scalars.
  """
  rewards = _rewards(params, batch['tokens'], batch['mask'], model, True, None)  # [B, K]
  # A denominator of 1 turns the mean over prompts into their sum.
  loss_sum, stats = losses.ranking_loss(rewards, batch['ranks'], batch['valid'], num_prompts=1.0)
  correct = jnp.round(stats['accuracy'] * jnp.maximum(stats['pairs'], 1))
  return {'rm/loss_sum': loss_sum, 'rm/prompts': stats['prompts'], 'rm/correct': correct,
          'rm/pairs': stats['pairs']}


def reward_scores(params, tokens: jax.Array, mask: jax.Array, *, model,
                  bias: float | jax.Array = 0.0) -> jax.Array:
  """The normalised RM score of each sequence: its reward at the last real token minus `bias`.

  Args:
    params: the scalar model's parameters.
    tokens: [..., T] int32, prompt + completion, left- or right-padded.
    mask: [..., T] bool, True on real tokens.
    model: a `ScalarModel`.
    bias: the stored normalisation bias (`normalisation_bias`); 0 gives raw scores.

  Returns:
    [...] float32 scores (e.g. [B] for [B, T] tokens).
  """
  return _rewards(params, tokens, mask, model, True, None) - bias


def normalisation_bias(demonstration_scores) -> float:
  """The bias that gives demonstrations a mean score of 0 once subtracted (paper section 3.5).

  Args:
    demonstration_scores: [N] raw scores (`reward_scores` with bias 0) of the prompt +
      demonstration sequences, gathered batch by batch by the caller.

  Returns:
    Their mean, accumulated in float64 (a large demonstration set loses no precision).
  """
  scores = np.asarray(demonstration_scores, np.float64).reshape(-1)
  if scores.size == 0:
    raise ValueError('normalisation_bias: no demonstration scores')
  return float(scores.mean())
