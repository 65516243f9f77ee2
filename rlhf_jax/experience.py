"""PPO rollouts: sample responses, score them, and turn the scores into advantages.

`make_experience` is the generate + score phase of one PPO iteration (InstructGPT section 3.5,
App. C.4): `generate` lets the policy answer a batch of prompts; `score` has the reward model
score each answer, the reference (sft_init) policy supply the per-token KL penalty and the value
model the baselines for GAE. The two are separate functions so the host loop can jit and time
them apart (`time/generate`, `time/score`). Everything is a pure, static-shape function of its
inputs; `ppo.ppo_step` consumes the resulting `Experience`. Shapes: B episodes, P prompt length
(left-padded), N response length (right-padded after EOS), V vocabulary.
"""
import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses, rl_math, sampling
from rlhf_jax.models import LanguageModel, ModelConfig, ScalarModel, last_token_value

Metrics = dict[str, jax.Array]
# score_fn(tokens [B, P + N], mask [B, P + N]) -> raw scores [B]; replaces the reward model.
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """Static settings of make_experience and ppo_step (hashable; bind with functools.partial).

  Build it from a stage config with `stages.ppo.settings_from_config`: every field after
  `score_fn` is the config field of the same name. configs/ppo.py holds their values (and cites
  the paper's), so none has a default here.

  Attributes:
    policy_model: geometry of the policy and of the reference policy.
    reward_model: geometry of the reward model and of the value model initialised from it.
    policy_tx, value_tx: the two optimizers (paper C.4: the value model has its own lr).
    policy_lr, value_lr: their learning-rate schedules, indexed by optimizer step (for metrics).
    response_len: N, tokens sampled per response.
    eos_id: the stop token; None samples exactly N tokens and never applies `no_eos_penalty`.
    pad_id: written after EOS.
    score_fn: a stand-in for the reward model (toy rewards in tests and experiments), or None.
    batch_size: episodes per iteration (paper 512).
    minibatch_size: episodes per optimizer step (paper 64).
    ppo_epochs: passes over the rollout batch per iteration (paper 1).
    temperature: sampling temperature; log-probs use logits / temperature (paper 1).
    kl_target: > 0 switches on the adaptive KL controller of lm-human-preferences.
    kl_horizon: its horizon, in episodes.
    ptx_coef: gamma of PPO-ptx (paper 27.8); 0 skips the pretraining term entirely.
    clip, value_clip: PPO ratio clip and value clip (0.2 each).
    gae_gamma, gae_lambda: GAE discount (paper 1) and lambda.
    whiten_rewards: scale-only whitening of the shaped rewards over the rollout batch.
    whiten_advantages: zero-mean unit-variance advantages over the rollout batch.
    no_eos_penalty: the score of a response that never emits EOS.
    ema_decay: policy EMA decay per iteration.
    rollout_chunks: generate and score the batch in this many chunks of rows, one after the
      other: their peak memory (KV cache, [B, N, V] logits) shrinks by this factor.
    ptx_chunks: accumulate the pretraining gradient over this many chunks of its rows.
    unroll_update_layers: the update's forward and backward passes run the layers unrolled
      (`ppo.update_settings`); the rollout's forward-only passes keep the layer loop (config
      field of the same name, on for the CPU presets).
  """
  policy_model: ModelConfig
  reward_model: ModelConfig
  policy_tx: optax.GradientTransformation
  value_tx: optax.GradientTransformation
  policy_lr: optax.Schedule
  value_lr: optax.Schedule
  response_len: int
  eos_id: Optional[int]
  pad_id: int
  score_fn: Optional[ScoreFn]
  batch_size: int
  minibatch_size: int
  ppo_epochs: int
  temperature: float
  kl_target: float
  kl_horizon: float
  ptx_coef: float
  clip: float
  value_clip: float
  gae_gamma: float
  gae_lambda: float
  whiten_rewards: bool
  whiten_advantages: bool
  no_eos_penalty: float
  ema_decay: float
  rollout_chunks: int
  ptx_chunks: int
  unroll_update_layers: bool

  @property
  def n_minibatches(self) -> int:
    return self.batch_size // self.minibatch_size

  @property
  def updates_per_iteration(self) -> int:
    """Optimizer steps per PPO iteration (paper: 8 minibatches x 1 epoch)."""
    return self.n_minibatches * self.ppo_epochs


@flax.struct.dataclass
class Frozen:
  """Models PPO reads but never trains (never donated).

  Attributes:
    reference_params: the sft_init LanguageModel, the KL reference.
    reward_params: the reward ScalarModel.
    reward_bias: [] the RM normalisation bias, subtracted from every raw score (so that
      demonstrations score 0 on average).
  """
  reference_params: Any
  reward_params: Any
  reward_bias: jax.Array


@flax.struct.dataclass
class Experience:
  """One rollout batch; every field has the episode axis first, so minibatches are tree slices.

  Attributes:
    prompt_tokens, prompt_mask: [B, P] left-padded prompts.
    response_tokens, response_mask: [B, N] responses; mask True up to and including EOS.
    logprobs: [B, N] policy log-probs at rollout time (the PPO ratio's denominator), 0 on padding.
    ref_logprobs: [B, N] reference log-probs of the same tokens, 0 on padding.
    values: [B, N] value-model predictions V(s_t) before token t, 0 on padding.
    rewards: [B, N] KL-shaped (optionally whitened) rewards.
    advantages: [B, N] GAE advantages (optionally whitened).
    returns: [B, N] GAE returns (advantages before whitening + values): value targets.
    scores: [B] reward-model scores after bias and EOS penalty.
  """
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  response_tokens: jax.Array
  response_mask: jax.Array
  logprobs: jax.Array
  ref_logprobs: jax.Array
  values: jax.Array
  rewards: jax.Array
  advantages: jax.Array
  returns: jax.Array
  scores: jax.Array

  def sequences(self) -> tuple[jax.Array, jax.Array]:
    """Prompt + response: tokens [B, P + N], mask [B, P + N]."""
    return (jnp.concatenate([self.prompt_tokens, self.response_tokens], axis=1),
            jnp.concatenate([self.prompt_mask, self.response_mask], axis=1))


def response_logprobs(params: Any, config: ModelConfig, tokens: jax.Array, mask: jax.Array,
                      prompt_len: int, temperature: float) -> tuple[jax.Array, jax.Array]:
  """Log-probs of the response tokens from one full forward pass over prompt + response.

  The one place PPO turns policy logits into log-probs, so that rollout-time and update-time
  log-probs are computed identically (the ratio is exactly 1 before the first update).

  Args:
    params: LanguageModel params.
    config: its geometry.
    tokens: [B, P + N] prompt + response.
    mask: [B, P + N] bool.
    prompt_len: P.
    temperature: logits are divided by it, as at sampling time (lm-human-preferences).

  Returns:
    (logprobs [B, N] float32, scaled logits [B, N, V] float32 that predicted them).
  """
  # Position t predicts token t + 1: the response is predicted from P - 1 to the second-to-last.
  logits = LanguageModel(config).apply({'params': params}, tokens, mask,
                                       positions=slice(prompt_len - 1, -1)) / temperature
  return losses.token_logprobs(logits, tokens[:, prompt_len:]), logits


def response_values(params: Any, config: ModelConfig, tokens: jax.Array, mask: jax.Array,
                    prompt_len: int) -> jax.Array:
  """Value of the state before each response token: [B, P + N] -> [B, N].

  As lm-human-preferences `values[:, context_length-1:-1]`: the value for token t is read where
  the model has seen everything up to token t - 1.
  """
  values = ScalarModel(config).apply({'params': params}, tokens, mask)
  return values[:, prompt_len - 1:-1]


def score_responses(frozen: Frozen, tokens: jax.Array, mask: jax.Array,
                    response_tokens: jax.Array, response_mask: jax.Array,
                    settings: PPOSettings) -> jax.Array:
  """Reward-model scores minus the bias; a response without EOS gets `no_eos_penalty`.

  Args:
    frozen: holds the reward model and its bias.
    tokens, mask: [B, P + N] prompt + response up to and including EOS (the RM reads the last
      real token, which is EOS for a finished response, as in RM training).
    response_tokens, response_mask: [B, N].
    settings: static settings.

  Returns:
    [B] float32 scores.
  """
  if settings.score_fn is None:
    values = ScalarModel(settings.reward_model).apply({'params': frozen.reward_params}, tokens,
                                                      mask)
    raw = last_token_value(values, mask)
  else:
    raw = settings.score_fn(tokens, mask)
  scores = raw.astype(jnp.float32) - frozen.reward_bias
  if settings.eos_id is None:
    return scores
  ended = jnp.any(response_mask & (response_tokens == settings.eos_id), axis=1)
  return jnp.where(ended, scores, settings.no_eos_penalty)


def in_chunks(fn: Callable[..., Any], chunks: int, *arrays: jax.Array) -> Any:
  """`fn(*arrays)` computed on `chunks` groups of rows one after another, to bound memory.

  Every array has the row axis B first and `fn` must treat rows independently (a forward pass,
  a sampler); so does its output tree. Chunk c holds rows c, c + chunks, c + 2 * chunks, ...:
  strided rather than contiguous, so a batch split over devices stays split the same way within
  each chunk. `fn` also receives the chunk index (for a per-chunk PRNG key) as its first argument.
  """
  if chunks == 1:
    return fn(jnp.zeros((), jnp.int32), *arrays)
  b = arrays[0].shape[0]
  if b % chunks:
    raise ValueError(f'{b} rows do not split into {chunks} chunks')
  split = lambda x: jnp.swapaxes(x.reshape((b // chunks, chunks) + x.shape[1:]), 0, 1)
  join = lambda x: jnp.swapaxes(x, 0, 1).reshape((b,) + x.shape[2:])
  out = jax.lax.map(lambda xs: fn(*xs), (jnp.arange(chunks), *map(split, arrays)))
  return jax.tree.map(join, out)


def generate(state: Any, prompts: dict[str, jax.Array], rng: jax.Array, *,
             settings: PPOSettings) -> sampling.SampleOutput:
  """The generate phase: the policy answers the prompts (KV-cache sampler).

  With `settings.rollout_chunks` > 1 the prompts are answered a chunk at a time (each chunk
  samples with its own key folded from `rng`), so the KV cache holds B / chunks rows.

  Args:
    state: a `ppo.PPOState` (reads policy.params).
    prompts: PromptBatch with 'tokens' [B, P] int32 (left-padded) and 'mask' [B, P] bool.
    rng: PRNG key of the sampler.
    settings: static settings.

  Returns:
    SampleOutput with [B, N] tokens, logprobs and mask.
  """
  def answer(chunk, tokens, mask):
    key = rng if settings.rollout_chunks == 1 else jax.random.fold_in(rng, chunk)
    return sampling.sample(
        state.policy.params, settings.policy_model, tokens, mask, key,
        max_new_tokens=settings.response_len, temperature=settings.temperature,
        eos_id=settings.eos_id, pad_id=settings.pad_id)
  return in_chunks(answer, settings.rollout_chunks, prompts['tokens'],
                   prompts['mask'].astype(bool))


def score(state: Any, frozen: Frozen, prompts: dict[str, jax.Array],
          sample: sampling.SampleOutput, *, settings: PPOSettings) -> tuple[Experience, Metrics]:
  """The score phase: policy, reference and value forwards, RM scores, shaped rewards, GAE.

  Args:
    state: the `ppo.PPOState` that generated `sample` (reads policy, value and kl_coef).
    frozen: reference policy and reward model.
    prompts: the PromptBatch `sample` answers ('tokens', 'mask' [B, P]).
    sample: `generate`'s output, [B, N].
    settings: static settings.

  Returns:
    (experience, metrics); metrics are scalars named as lm-human-preferences.
  """
  prompt_tokens, prompt_mask = prompts['tokens'], prompts['mask'].astype(bool)
  p = prompt_tokens.shape[1]
  r_tokens, r_mask = sample.tokens, sample.mask
  tokens = jnp.concatenate([prompt_tokens, r_tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, r_mask], axis=1)
  t = settings.temperature

  def forwards(_, tokens, mask, r_tokens, r_mask):
    # Recomputed with a full forward rather than taken from the sampler, so rollout-time and
    # update-time log-probs come from the same computation (the first ratio is exactly 1).
    logprobs, _ = response_logprobs(state.policy.params, settings.policy_model, tokens, mask, p, t)
    ref_logprobs, _ = response_logprobs(frozen.reference_params, settings.policy_model, tokens,
                                        mask, p, t)
    values = response_values(state.value.params, settings.reward_model, tokens, mask, p)
    return (*(jnp.where(r_mask, x, 0) for x in (logprobs, ref_logprobs, values)),
            score_responses(frozen, tokens, mask, r_tokens, r_mask, settings))

  # The [B, N, V] logits of the policy and reference forwards are the phase's peak memory:
  # chunks of rows bound it.
  logprobs, ref_logprobs, values, scores = in_chunks(forwards, settings.rollout_chunks, tokens,
                                                     mask, r_tokens, r_mask)
  rewards, kl = rl_math.kl_shaped_rewards(logprobs, ref_logprobs, scores, r_mask, state.kl_coef)
  if settings.whiten_rewards:
    rewards = rl_math.masked_whiten(rewards, r_mask, shift_mean=False)
  advantages, returns = rl_math.gae(rewards, values, r_mask, settings.gae_gamma,
                                    settings.gae_lambda)
  if settings.whiten_advantages:
    advantages = rl_math.masked_whiten(advantages, r_mask)
  exp = Experience(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, response_tokens=r_tokens,
                   response_mask=r_mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                   values=values, rewards=rewards, advantages=advantages, returns=returns,
                   scores=scores)
  return exp, _rollout_metrics(exp, kl, state.kl_coef, settings)


def make_experience(state: Any, frozen: Frozen, prompts: dict[str, jax.Array], rng: jax.Array, *,
                    settings: PPOSettings) -> tuple[Experience, Metrics]:
  """Samples one rollout batch and computes everything ppo_step needs: `score(generate(...))`.

  The host loop jits the two phases separately to time them; this composition is for callers
  that want one program.

  Args:
    state: a `ppo.PPOState` (reads policy.params, value.params, kl_coef).
    frozen: reference policy and reward model.
    prompts: PromptBatch with 'tokens' [B, P] int32 (left-padded) and 'mask' [B, P] bool.
    rng: PRNG key of the sampler.
    settings: static settings.

  Returns:
    (experience, metrics); metrics are scalars named as lm-human-preferences.
  """
  sample = generate(state, prompts, rng, settings=settings)
  return score(state, frozen, prompts, sample, settings=settings)


def _rollout_metrics(exp: Experience, kl: jax.Array, kl_coef: jax.Array,
                     settings: PPOSettings) -> Metrics:
  """Batch means of the rollout (lm-human-preferences `objective/*` names)."""
  kl_per_episode = jnp.sum(kl, axis=1)  # [B]; kl is already 0 on padding
  lengths = jnp.sum(exp.response_mask, axis=1).astype(jnp.float32)
  metrics = {
      'objective/kl': jnp.mean(kl_per_episode),
      'objective/kl_coef': jnp.asarray(kl_coef, jnp.float32),
      'objective/scores': jnp.mean(exp.scores),
      'objective/score_total': jnp.mean(exp.scores - kl_coef * kl_per_episode),
      # Summed -log p of the sampled response: a one-sample estimate of its entropy.
      'objective/entropy': jnp.mean(-jnp.sum(exp.logprobs, axis=1)),
      'ppo/returns/mean': rl_math.masked_mean(exp.returns, exp.response_mask),
      'ppo/returns/var': rl_math.masked_var(exp.returns, exp.response_mask),
      'response/length': jnp.mean(lengths),
  }
  if settings.eos_id is not None:
    ended = jnp.any(exp.response_mask & (exp.response_tokens == settings.eos_id), axis=1)
    metrics['response/eos_frac'] = jnp.mean(ended.astype(jnp.float32))
  return metrics
