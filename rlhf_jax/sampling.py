"""Autoregressive sampling with the KV cache: one jitted program, fixed shapes.

A prefill writes the left-padded prompt into a cache of P + N - 1 slots, then a
`lax.while_loop` draws one token per step (temperature, top-k, top-p) and feeds it back, until
N - 1 tokens or every row has hit EOS; the last token is drawn after the loop, with no forward.
Each step costs time proportional to the filled cache length (see models/attention.py).
Log-probs are those of the chosen token under the temperature-scaled full softmax (logits / T),
as lm-human-preferences: the policy's log-prob of what it sampled, before any truncation.
"""
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models import LanguageModel, ModelConfig, init_cache


@flax.struct.dataclass
class SampleOutput:
  """A batch of responses.

  Attributes:
    tokens: [B, N] int32; pad_id after the first EOS (and after the loop stops early).
    logprobs: [B, N] float32 log-prob of each token under softmax(logits / T); 0 where masked.
      Greedy (T = 0) reports the untempered softmax.
    mask: [B, N] bool, True up to and including the first EOS.
  """
  tokens: jax.Array
  logprobs: jax.Array
  mask: jax.Array


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) support to -inf.

  Args:
    logits: [B, V] float32 (already temperature-scaled).
    top_k: keep the k largest (0 = all). Ties at the k-th value are all kept.
    top_p: keep the smallest prefix of the sorted distribution whose mass reaches top_p
      (the most likely token always survives).

  Returns:
    [B, V] float32.
  """
  neg_inf = jnp.finfo(logits.dtype).min
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p
    # The smallest kept logit is the cut-off; everything below it goes.
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg_inf, logits)
  return logits


def _choose(logits, rng, temperature, top_k, top_p):
  """Next tokens [B] and their log-probs [B] from logits [B, V]."""
  if temperature == 0.0:
    token = jnp.argmax(logits, axis=-1)
    scaled = logits
  else:
    scaled = logits / temperature
    token = jax.random.categorical(rng, filter_logits(scaled, top_k, top_p), axis=-1)
  logprobs = jax.nn.log_softmax(scaled, axis=-1)
  return token.astype(jnp.int32), jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]


@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens', 'temperature', 'top_k',
                                             'top_p', 'eos_id', 'pad_id'))
def sample(params: Any, config: ModelConfig, prompt_tokens: jax.Array, prompt_mask: jax.Array,
           rng: jax.Array, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, eos_id: Optional[int] = None, pad_id: int = 0) -> SampleOutput:
  """Samples `max_new_tokens` continuations of left-padded prompts.

  Args:
    params: LanguageModel params (the 'params' collection; may be sharded).
    config: the model's config (static).
    prompt_tokens: [B, P] int32, left-padded.
    prompt_mask: [B, P] bool, True for real prompt tokens.
    rng: PRNG key; step i uses fold_in(rng, i), so outputs do not depend on when the loop stops.
    max_new_tokens: N, the response length (static).
    temperature: softmax temperature; 0 means greedy.
    top_k, top_p: support truncation of the sampling distribution (not of the logprobs).
    eos_id: stop token; None samples all N tokens.
    pad_id: written after EOS.

  Returns:
    SampleOutput with [B, N] fields.
  """
  model = LanguageModel(config)
  variables = {'params': params}
  b, p = prompt_tokens.shape
  n = max_new_tokens
  if n < 1:
    raise ValueError(f'max_new_tokens must be at least 1, got {n}')
  # The last token is never fed back, so the cache needs P + N - 1 slots.
  cache = init_cache(config, b, p + n - 1)
  logits, cache = model.apply(variables, prompt_tokens, prompt_mask, cache=cache,
                              positions=slice(-1, None))
  init = dict(i=jnp.zeros((), jnp.int32), cache=cache, logits=logits[:, 0],
              done=jnp.zeros((b,), bool), tokens=jnp.full((b, n), pad_id, jnp.int32),
              logprobs=jnp.zeros((b, n), jnp.float32), mask=jnp.zeros((b, n), bool))

  def pick(s):
    """Chooses and records token i from s['logits']; returns (state, token [B], live [B])."""
    token, logprob = _choose(s['logits'], jax.random.fold_in(rng, s['i']), temperature, top_k,
                             top_p)
    live = ~s['done']
    token = jnp.where(live, token, pad_id)
    write = lambda buf, x: jax.lax.dynamic_update_slice(buf, x[:, None], (0, s['i']))
    done = s['done'] if eos_id is None else s['done'] | (token == eos_id)
    return dict(s, i=s['i'] + 1, done=done, tokens=write(s['tokens'], token),
                logprobs=write(s['logprobs'], jnp.where(live, logprob, 0.0)),
                mask=write(s['mask'], live)), token, live

  def body(s):
    s, token, live = pick(s)
    logits, cache = model.apply(variables, token[:, None], live[:, None], cache=s['cache'])
    return dict(s, cache=cache, logits=logits[:, 0])

  def cond(s):
    return (s['i'] < n - 1) & ~jnp.all(s['done'])

  # The loop feeds back tokens 0 .. N - 2; token N - 1 needs no forward after it (after an early
  # stop, every row is done and this last pick writes padding only).
  out, _, _ = pick(jax.lax.while_loop(cond, body, init))
  return SampleOutput(tokens=out['tokens'], logprobs=out['logprobs'], mask=out['mask'])
