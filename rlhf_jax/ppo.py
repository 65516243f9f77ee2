"""PPO and PPO-ptx updates (InstructGPT section 3.5, App. C.4): the pure `ppo_step`.

One iteration = `experience.generate` and `experience.score` (together `make_experience`) then
`ppo_step` (train): each epoch permutes the rollout batch, splits it into minibatches and scans
over them on device; per minibatch the policy takes one step on the clipped surrogate plus gamma
times the pretraining NLL gradient (ptx), and the separate value model one step on the clipped
value loss. The policy EMA and the KL controller then advance once per iteration. Shapes: B
episodes, M minibatch size, U optimizer updates per iteration, R pretraining rows per update, T
their length.
"""
import dataclasses
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rlhf_jax import losses, rl_math
from rlhf_jax.experience import (Experience, Frozen, Metrics, PPOSettings, generate,
                                 make_experience, response_logprobs, response_values, score)
from rlhf_jax.models import LanguageModel
from rlhf_jax.sharding import constrain, replicated
from rlhf_jax.state import TrainState, abstract_train_state, create_train_state

__all__ = ['Experience', 'Frozen', 'PPOSettings', 'PPOState', 'abstract_ppo_state', 'generate',
           'init_ppo_state', 'make_experience', 'policy_gradients', 'ppo_step', 'score']


@flax.struct.dataclass
class PPOState:
  """Everything PPO trains or adapts (donated to ppo_step).

  Attributes:
    step: [] int32, PPO iterations done.
    policy: the policy's TrainState (its step counts optimizer updates, U per iteration).
    value: the value model's TrainState (a ScalarModel initialised from the RM, paper C.4).
    ema_params: EMA of the policy params (decay `ema_decay`), what evaluation uses by
      default.
    kl_coef: [] float32, beta; changes only under the adaptive controller.
  """
  step: jax.Array
  policy: TrainState
  value: TrainState
  ema_params: Any
  kl_coef: jax.Array


def init_ppo_state(policy_params: Any, value_params: Any, kl_coef: float,
                   settings: PPOSettings) -> PPOState:
  """The iteration-0 state: policy from sft_init, value model from the RM (pass its params).

  The EMA starts as a copy of the policy, so donating the state never donates one buffer twice.
  """
  return PPOState(step=jnp.zeros((), jnp.int32),
                  policy=create_train_state(policy_params, settings.policy_tx),
                  value=create_train_state(value_params, settings.value_tx),
                  ema_params=jax.tree.map(jnp.copy, policy_params),
                  kl_coef=jnp.asarray(kl_coef, jnp.float32))


def abstract_ppo_state(settings: PPOSettings, mesh: Mesh) -> tuple[PPOState, PPOState]:
  """ShapeDtypeStructs of a PPOState (each carrying its sharding) and the shardings.

  Nothing is allocated: this is the checkpoint restore target and the jit shardings. The EMA
  is laid out like the policy parameters; step and kl_coef are replicated scalars.
  """
  policy, policy_sh = abstract_train_state(settings.policy_model, 'lm', settings.policy_tx, mesh)
  value, value_sh = abstract_train_state(settings.reward_model, 'scalar', settings.value_tx, mesh)
  scalar = replicated(mesh)
  shardings = PPOState(step=scalar, policy=policy_sh, value=value_sh,
                       ema_params=policy_sh.params, kl_coef=scalar)
  shapes = PPOState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=scalar), policy=policy,
                    value=value, ema_params=policy.params,
                    kl_coef=jax.ShapeDtypeStruct((), jnp.float32, sharding=scalar))
  return shapes, shardings


def update_settings(settings: PPOSettings) -> PPOSettings:
  """The settings the update's passes use: both models with the layer loop unrolled, if asked.

  Differentiating a layer loop stores each layer's activations in stacked [L, ...] buffers that
  are zero-filled first and written and read one layer slice at a time. On a small model on CPU
  that bookkeeping costs about as much as the matmuls: unrolled, tiny's update phase is ~17%
  faster. The rollout's forward-only passes are faster with the loop (experiments/bench/README.md).
  """
  if not settings.unroll_update_layers:
    return settings
  return dataclasses.replace(settings, policy_model=settings.policy_model.unrolled(),
                             reward_model=settings.reward_model.unrolled())


def _policy_loss(params: Any, mb: Experience, settings: PPOSettings) -> tuple[jax.Array, Metrics]:
  """Clipped surrogate of one minibatch, with entropy and approx-KL as metrics."""
  tokens, mask = mb.sequences()
  logprobs, logits = response_logprobs(params, settings.policy_model, tokens, mask,
                                       mb.prompt_tokens.shape[1], settings.temperature)
  loss, metrics = losses.ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.response_mask,
                                         settings.clip)
  entropy = rl_math.masked_mean(losses.entropy_from_logits(logits), mb.response_mask)
  return loss, {'ppo/policy/loss': loss, 'ppo/policy/clipfrac': metrics['clipfrac'],
                'ppo/policy/approxkl': metrics['approxkl'], 'ppo/policy/entropy': entropy}


def ptx_loss(params: Any, settings: PPOSettings, batch: dict[str, jax.Array]) -> jax.Array:
  """Mean next-token NLL of a pretraining TokenBatch (tokens, mask, loss_mask [R, T])."""
  nll_sum, count = _ptx_nll(params, settings, batch)
  return nll_sum / jnp.maximum(count, 1)


def _ptx_nll(params: Any, settings: PPOSettings,
             batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(summed next-token NLL, token count) of a pretraining TokenBatch."""
  logits = LanguageModel(settings.policy_model).apply({'params': params}, batch['tokens'],
                                                      batch['mask'].astype(bool))
  return losses.token_nll(logits[:, :-1], batch['tokens'][:, 1:],
                          batch['loss_mask'][:, 1:].astype(bool))


def ptx_gradients(params: Any, settings: PPOSettings,
                  batch: dict[str, jax.Array]) -> tuple[jax.Array, Any]:
  """(mean NLL, its gradient) of a pretraining batch of R rows, in `settings.ptx_chunks`
  chunks of rows accumulated one after the other: the [R, T, V] logits of the paper's 8 rows
  per episode are the update's peak memory, and chunks divide it."""
  chunks = settings.ptx_chunks
  if chunks == 1:
    return jax.value_and_grad(ptx_loss)(params, settings, batch)
  split = lambda x: jnp.swapaxes(x.reshape((-1, chunks) + x.shape[1:]), 0, 1)

  def accumulate(carry, rows):
    (nll_sum, count), grads = jax.value_and_grad(
        lambda p: _ptx_nll(p, settings, rows), has_aux=True)(params)
    total_nll, total_count, total_grads = carry
    return (total_nll + nll_sum, total_count + count,
            jax.tree.map(jnp.add, total_grads, grads)), None

  zero = jnp.zeros((), jnp.float32)
  (nll_sum, count, grads), _ = jax.lax.scan(
      accumulate, (zero, zero, jax.tree.map(jnp.zeros_like, params)),
      jax.tree.map(split, batch))
  scale = 1 / jnp.maximum(count, 1)
  return nll_sum * scale, jax.tree.map(lambda g: g * scale, grads)


def policy_gradients(params: Any, mb: Experience, ptx: Optional[dict[str, jax.Array]],
                     settings: PPOSettings) -> tuple[Any, Metrics]:
  """PPO gradient of one minibatch plus ptx_coef times the pretraining NLL gradient.

  Paper C.4: "we compute the PPO gradients and pretraining gradients in consecutive steps and
  accumulate them both into the gradient buffers"; two backward passes rather than one over the
  summed loss keep only one forward's activations alive at a time.
  """
  (_, metrics), grads = jax.value_and_grad(_policy_loss, has_aux=True)(params, mb, settings)
  if settings.ptx_coef:
    nll, ptx_grads = ptx_gradients(params, settings, ptx)
    grads = jax.tree.map(lambda g, h: g + settings.ptx_coef * h, grads, ptx_grads)
    metrics['ptx/loss'] = nll
  return grads, metrics


def _value_loss(params: Any, mb: Experience, settings: PPOSettings) -> tuple[jax.Array, Metrics]:
  """Clipped value loss of one minibatch on the separate value model."""
  tokens, mask = mb.sequences()
  vpred = response_values(params, settings.reward_model, tokens, mask, mb.prompt_tokens.shape[1])
  loss, metrics = losses.value_loss(vpred, mb.values, mb.returns, mb.response_mask,
                                    settings.value_clip)
  return loss, {'ppo/val/loss': loss, 'ppo/val/clipfrac': metrics['clipfrac'],
                'ppo/val/vpred': rl_math.masked_mean(vpred, mb.response_mask),
                'ppo/val/var_explained': rl_math.var_explained(vpred, mb.returns,
                                                               mb.response_mask)}


def _update(carry: tuple[TrainState, TrainState], xs, settings: PPOSettings):
  """One optimizer step of the policy and of the value model on one minibatch (a scan body)."""
  policy, value = carry
  mb, ptx = _constrain_batch(xs)
  metrics = {'ppo/policy/lr': settings.policy_lr(policy.step),
             'ppo/val/lr': settings.value_lr(value.step)}
  grads, policy_metrics = policy_gradients(policy.params, mb, ptx, settings)
  (_, value_metrics), value_grads = jax.value_and_grad(_value_loss, has_aux=True)(
      value.params, mb, settings)
  policy = policy.apply_gradients(grads, settings.policy_tx)
  value = value.apply_gradients(value_grads, settings.value_tx)
  return (policy, value), {**metrics, **policy_metrics, **value_metrics}


def _constrain_batch(tree: Any) -> Any:
  """Keeps each minibatch split over the batch mesh axes after the permuting gather."""
  return jax.tree.map(lambda x: constrain(x, ('act_batch',) + (None,) * (x.ndim - 1)), tree)


def _minibatches(exp: Experience, rng: jax.Array, settings: PPOSettings) -> Experience:
  """Each epoch a fresh permutation of the episodes, split into minibatches: [U, M, ...]."""
  def epoch(key):
    perm = jax.random.permutation(key, settings.batch_size)
    return jax.tree.map(lambda x: x[perm].reshape(
        (settings.n_minibatches, settings.minibatch_size) + x.shape[1:]), exp)

  epochs = [epoch(key) for key in jax.random.split(rng, settings.ppo_epochs)]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *epochs)


def ppo_step(state: PPOState, exp: Experience, ptx: Optional[dict[str, jax.Array]],
             rng: jax.Array, *, settings: PPOSettings) -> tuple[PPOState, Metrics]:
  """One PPO iteration's training on a rollout batch.

  Args:
    state: the PPOState the experience was sampled with.
    exp: the rollout batch, B = settings.batch_size episodes.
    ptx: pretraining TokenBatch with 'tokens', 'mask', 'loss_mask' shaped [U, R, T], one
      [R, T] batch per optimizer update (paper: R = 8 x minibatch size); None when
      settings.ptx_coef == 0.
    rng: key of the minibatch permutations.
    settings: static settings.

  Returns:
    (new state, metrics): per-update metrics averaged over the U updates, plus
    'objective/kl_coef_next', the coefficient the next rollout will use.
  """
  if exp.scores.shape[0] != settings.batch_size:
    raise ValueError(f'experience has {exp.scores.shape[0]} episodes, settings.batch_size is '
                     f'{settings.batch_size}')
  if settings.ptx_coef and ptx is None:
    raise ValueError('ptx_coef > 0 needs a pretraining batch')
  xs = (_minibatches(exp, rng, settings), ptx if settings.ptx_coef else None)
  (policy, value), metrics = jax.lax.scan(
      functools.partial(_update, settings=update_settings(settings)), (state.policy, state.value),
      xs)
  kl_coef = state.kl_coef
  if settings.kl_target > 0:
    # lm-human-preferences: current KL = batch mean of summed per-token KL, n_steps = episodes.
    kl = jnp.mean(rl_math.masked_sum(exp.logprobs - exp.ref_logprobs, exp.response_mask, axis=1))
    kl_coef = rl_math.adaptive_kl_coef(kl_coef, kl, settings.kl_target, settings.kl_horizon,
                                       settings.batch_size)
  new_state = state.replace(step=state.step + 1, policy=policy, value=value, kl_coef=kl_coef,
                            ema_params=rl_math.ema_update(state.ema_params, policy.params,
                                                          settings.ema_decay))
  metrics = jax.tree.map(jnp.mean, metrics)
  metrics['objective/kl_coef_next'] = kl_coef
  return new_state, metrics
