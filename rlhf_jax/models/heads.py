"""Models on the shared trunk: the language model (policy, SFT, reference) and the scalar model
(reward model, value function).

Both keep the transformer under the submodule name `trunk`, so `params['trunk']` moves between
them: the RM starts from the SFT model's trunk, the value function from the RM.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.cache import KVCache
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.decoder import INIT_STD, Trunk
from rlhf_jax.sharding import constrain

BTV = ('act_batch', 'act_length', 'act_vocab')


class LanguageModel(nn.Module):
  """Decoder with an LM head: tied (reuses the trunk's embedding) or a Dense named `lm_head`."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, mask, *, deterministic: bool = True,
               cache: Optional[KVCache] = None, positions: slice = slice(None)):
    """Next-token logits.

    Args:
      tokens: [B, T] int32.
      mask: [B, T] bool, True for real tokens; rows may be left- or right-padded.
      deterministic: False enables dropout (needs the 'dropout' rng).
      cache: when given, tokens are written at `cache.index` and attend to the cache.
      positions: the positions whose logits are computed (T' of them): the LM head and its
        [B, T, V] output are skipped elsewhere. A prefill needs only the last position, PPO only
        the response's.

    Returns:
      logits [B, T', V] float32, or (logits, new_cache) when `cache` is given.
    """
    c = self.config
    trunk = Trunk(c, deterministic, name='trunk')
    h, new_cache = trunk(tokens, mask, cache)
    h = h[:, positions]
    if c.tie_embeddings:
      logits = trunk.attend(h)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                        kernel_init=nn.with_logical_partitioning(
                            nn.initializers.normal(INIT_STD), ('embed', 'vocab')),
                        name='lm_head')(h)
    logits = constrain(logits.astype(jnp.float32), BTV)
    if c.real_vocab_size is not None and c.real_vocab_size < c.vocab_size:
      # Finite, so a log-softmax stays NaN-free; exp(-1e9) is exactly 0 in float32.
      logits = jnp.where(jnp.arange(c.vocab_size) < c.real_vocab_size, logits, -1e9)
    return logits if cache is None else (logits, new_cache)


class ScalarModel(nn.Module):
  """Decoder with a scalar head (`scalar_head`, Dense(1)): a value per token."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, mask, *, deterministic: bool = True):
    """tokens, mask [B, T] -> values [B, T] float32 (read the score with `last_token_value`)."""
    c = self.config
    h, _ = Trunk(c, deterministic, name='trunk')(tokens, mask)
    # lm-human-preferences' head init: normal(1 / sqrt(d_model + 1)), zero bias; fp32 for a
    # precise scalar.
    head = nn.Dense(1, dtype=jnp.float32, param_dtype=c.param_dtype,
                    kernel_init=nn.with_logical_partitioning(
                        nn.initializers.normal(1 / np.sqrt(c.d_model + 1)), ('embed', None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
                    name='scalar_head')
    return head(h.astype(jnp.float32))[..., 0]


def last_token_value(values: jax.Array, mask: jax.Array) -> jax.Array:
  """The value at each row's last real token.

  Args:
    values: [B, T].
    mask: [B, T] bool (left- or right-padded; rows with no real token read position T - 1).

  Returns:
    [B].
  """
  t = mask.shape[1]
  last = t - 1 - jnp.argmax(mask[:, ::-1], axis=1)
  return jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]
