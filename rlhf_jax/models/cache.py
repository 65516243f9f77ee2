"""The KV cache of autoregressive decoding: a fixed-size pytree, written slot by slot."""
import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for S slots, plus the bookkeeping to extend them.

  Slots are filled left to right (a prefill of T tokens, then one token per step); a left-padded
  prompt leaves invalid slots that `mask` hides from attention.

  Attributes:
    k, v: [L, B, K, S, Dh] rotated keys and values (compute dtype); slots after heads, so that
      the filled slots of one (row, head) are contiguous (see attention.cached_attention).
    mask: [B, S] bool, True where a slot holds a real token.
    index: [] int32, the next slot to write (same for every row).
    positions: [B] int32, the position id the row's next real token gets.
  """
  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array
  positions: jax.Array

  @property
  def max_len(self) -> int:
    return self.k.shape[3]


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> KVCache:
  """An empty cache of `max_len` slots (writes past the end would be clamped: fit every write)."""
  shape = (config.n_layers, batch_size, config.kv_heads, max_len, config.d_head)
  return KVCache(k=jnp.zeros(shape, config.dtype), v=jnp.zeros(shape, config.dtype),
                 mask=jnp.zeros((batch_size, max_len), bool), index=jnp.zeros((), jnp.int32),
                 positions=jnp.zeros((batch_size,), jnp.int32))
