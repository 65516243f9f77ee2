"""Attention kernels: dense over a sequence's own keys, and blockwise over a KV cache.

The dense kernel is the training / full-forward path. The cached kernel serves decoding: a chunk
(a prefill, or one token per step) attends to the filled slots of the cache plus its own keys,
which the caller writes into the cache afterwards. It reads the cache in blocks of `KV_BLOCK`
slots with an online softmax (running max and sum, as flash-decoding), looping only over the
filled blocks, so a step costs time proportional to the filled length rather than to the cache
capacity, and reads each cached key and value once. The cache keeps slots after heads
([L, B, K, S, Dh]): a block is then B * K contiguous [slots, Dh] matrices, which the CPU's
batched matmuls read directly; slots before heads measured twice as slow per slot (transposes).

Shapes: B batch, T query length, S key length or cache slots, L layers, K kv heads,
G = H // K query heads per kv head, Dh head dim.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Cache slots per iteration of the decode loop. Each iteration has a fixed overhead (a loop trip
# per layer and step on CPU); the last filled block wastes at most KV_BLOCK - 1 masked slots.
KV_BLOCK = 64
# Masked scores get a finite floor (not -inf): a row with no valid key (a padding query) then
# averages the values uniformly instead of turning into NaN; any valid key outweighs it fully.
_FLOOR = float(np.finfo(np.float32).min)


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                    dropout: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Softmax attention of q over all keys at once.

  Args:
    q: [B, T, K, G, Dh] queries (compute dtype).
    k, v: [B, S, K, Dh] keys and values.
    mask: [B, T, S] bool, True where a query may attend to a key.
    dropout: applied to the attention probabilities [B, K, G, T, S].

  Returns:
    [B, T, K, G, Dh] in q's dtype.
  """
  scores = jnp.einsum('btkgd,bskd->bkgts', q, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
  scores = jnp.where(mask[:, None, None], scores, _FLOOR)
  probs = dropout(jax.nn.softmax(scores, axis=-1).astype(q.dtype))
  return jnp.einsum('bkgts,bskd->btkgd', probs, v.astype(q.dtype))


def _online_update(carry, q, keys, values, valid):
  """Folds one block of keys into the running (max, sum, weighted values) of an online softmax.

  Args:
    carry: (m [B, K, G, T], l [B, K, G, T], acc [B, K, G, T, Dh]) float32.
    q: [B, K, G, T, Dh] queries.
    keys, values: [B, K, S', Dh] one block, in the cache's layout.
    valid: [B, T, S'] bool.

  Returns:
    The updated carry.
  """
  m, l, acc = carry
  scores = jnp.einsum('bkgtd,bksd->bkgts', q, keys.astype(q.dtype),
                      preferred_element_type=jnp.float32) / np.sqrt(q.shape[-1])
  scores = jnp.where(valid[:, None, None], scores, _FLOOR)
  m_new = jnp.maximum(m, scores.max(axis=-1))
  probs = jnp.exp(scores - m_new[..., None])
  rescale = jnp.exp(m - m_new)  # 0 once a valid key replaces the floor: masked mass vanishes.
  l = l * rescale + probs.sum(axis=-1)
  acc = acc * rescale[..., None] + jnp.einsum(
      'bkgts,bksd->bkgtd', probs.astype(q.dtype), values.astype(q.dtype),
      preferred_element_type=jnp.float32)
  return m_new, l, acc


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache_k: jax.Array,
                     cache_v: jax.Array, layer: jax.Array, mask: jax.Array,
                     write_index: jax.Array) -> jax.Array:
  """Attention of a chunk over the cache's filled slots and its own keys, block by block.

  Args:
    q: [B, T, K, G, Dh] the chunk's queries (compute dtype).
    k, v: [B, T, K, Dh] the chunk's own keys and values (not yet in the cache).
    cache_k, cache_v: [L, B, K, S, Dh] every layer's cache (see KVCache); slots < write_index
      are filled. Passed whole (not sliced per layer) so that only the filled blocks are read.
    layer: [] int32, this layer's index into L.
    mask: [B, T, S] bool over all slots, the chunk's own keys at slots write_index + [0, T).
    write_index: [] int32, the number of filled slots.

  Returns:
    [B, T, K, G, Dh] in q's dtype.
  """
  b, t, n_kv, g, dh = q.shape
  slots = cache_k.shape[3]
  block = min(KV_BLOCK, slots)
  q = q.transpose(0, 2, 3, 1, 4)  # [B, K, G, T, Dh]: (b, k) lead, as in the cache's blocks.

  def read_block(i, carry):
    # The last block is clamped into bounds; slots an earlier block covered are masked again.
    start = jnp.minimum(i * block, slots - block)
    index = (layer, 0, 0, start, 0)
    keys = jax.lax.dynamic_slice(cache_k, index, (1, b, n_kv, block, dh))[0]
    values = jax.lax.dynamic_slice(cache_v, index, (1, b, n_kv, block, dh))[0]
    slot = start + jnp.arange(block)
    fresh = (slot >= i * block) & (slot < write_index)
    valid = jax.lax.dynamic_slice_in_dim(mask, start, block, axis=2) & fresh
    return _online_update(carry, q, keys, values, valid)

  init = (jnp.full((b, n_kv, g, t), _FLOOR, jnp.float32), jnp.zeros((b, n_kv, g, t), jnp.float32),
          jnp.zeros((b, n_kv, g, t, dh), jnp.float32))
  n_blocks = (write_index + block - 1) // block
  carry = jax.lax.fori_loop(0, n_blocks, read_block, init)
  own = jax.lax.dynamic_slice_in_dim(mask, write_index, t, axis=2)
  _, l, acc = _online_update(carry, q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), own)
  return (acc / l[..., None]).transpose(0, 3, 1, 2, 4).astype(q.dtype)
