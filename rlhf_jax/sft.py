"""Supervised fine-tuning step (InstructGPT section 3.5, App. C.1); also the pretrain stage's step.

The step is one masked next-token NLL over `batch['loss_mask']`, whatever the rows hold:
demonstrations (completion tokens, plus prompt tokens when the pipeline was built with
`loss_on_prompt`), pretraining text (every token), or both. The optional pretraining mix of
`configs/sft_init.py` (App. C.3: 10% pretraining data) is therefore done by the data pipeline,
which puts text rows into the batch; the step needs nothing special, and each token counts
equally in the mean whichever kind of row it sits in.

Packed rows' `segment_ids`/`positions` are not read: the model attends across packed documents,
as GPT-3 pretraining did (see `data/pipeline.py`).

Both functions are pure; `loop.py` binds the keyword arguments with `functools.partial` and
jits once.
"""
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses
from rlhf_jax.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _nll(params, batch: Batch, model, deterministic: bool,
         rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(nll_sum, token_count) of the batch's loss tokens; position t predicts token t + 1."""
  tokens = batch['tokens']  # [B, T]
  rngs = None if deterministic else {'dropout': rng}
  # The last position predicts nothing: the LM head skips it (rather than slicing its logits,
  # a copy of [B, T - 1, V] whose gradient is a padded copy back).
  logits = model.apply({'params': params}, tokens, batch['mask'], deterministic=deterministic,
                       rngs=rngs, positions=slice(None, -1))  # [B, T - 1, V]
  # loss_mask is never set on a document's first token, so the shift needs no segment logic.
  return losses.token_nll(logits, tokens[:, 1:], batch['loss_mask'][:, 1:])


def sft_step(state: TrainState, batch: Batch, rng: jax.Array, *, model,
             tx: optax.GradientTransformation,
             lr_schedule: optax.Schedule | None = None) -> tuple[TrainState, Metrics]:
  """One optimiser update on the exact token-mean NLL of `batch`, with dropout on.

  Args:
    state: the LM's TrainState.
    batch: a TokenBatch: tokens [B, T] int32, mask [B, T] bool, loss_mask [B, T] bool.
    rng: this step's key (the loop passes fold_in(base, step)); used only for dropout.
    model: a `LanguageModel`.
    tx: the optimiser that built `state.opt_state`.
    lr_schedule: when given, the learning rate of this update is reported.

  Returns:
    (new_state, metrics): 'sft/loss' (mean NLL per loss token, nats), 'sft/tokens' (loss tokens),
    'learning/grad_norm' (global norm before clipping) and, with `lr_schedule`, 'learning/lr'.
  """
  def loss_fn(params):
    nll_sum, count = _nll(params, batch, model, False, rng)
    return nll_sum / jnp.maximum(count, 1), count

  (loss, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {'sft/loss': loss, 'sft/tokens': count,
             'learning/grad_norm': optax.tree.norm(grads)}
  if lr_schedule is not None:
    # optax's schedule count equals state.step: both count the updates applied before this one.
    metrics['learning/lr'] = jnp.asarray(lr_schedule(state.step), jnp.float32)
  return state.apply_gradients(grads, tx), metrics


def sft_eval_step(params, batch: Batch, *, model) -> Metrics:
  """Summed NLL and token count of one batch, dropout off.

  Sum 'sft/loss_sum' and 'sft/tokens' over all batches, then divide: the exact validation loss
  per token, however the tokens fall into batches.

  Args:
    params: the LM parameters.
    batch: a TokenBatch (see `sft_step`).
    model: a `LanguageModel`.

  Returns:
    {'sft/loss_sum': float32 scalar, 'sft/tokens': float32 scalar}.
  """
  nll_sum, count = _nll(params, batch, model, True, None)
  return {'sft/loss_sum': nll_sum, 'sft/tokens': count}
