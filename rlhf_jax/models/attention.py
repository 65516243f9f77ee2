"""Attention kernels: dense over a sequence's own keys, and over a KV cache's filled prefix.

The dense kernel is the training / full-forward path. The cached kernel serves decoding: a chunk
(a prefill, or one token per step) attends to the filled slots of the cache plus its own keys,
which the caller writes into the cache afterwards. It reads the filled prefix of the cache,
rounded up to a multiple of `KV_BLOCK` slots, in one piece: a `lax.switch` over the possible
prefix lengths keeps every shape static, so a step costs time proportional to the filled length
rather than to the cache capacity and reads each cached key and value once. The prefix and the
chunk's own keys are combined with an online softmax (running max and sum, as flash-decoding).
The cache keeps slots after heads ([L, B, K, S, Dh]): a prefix is then B * K contiguous
[slots, Dh] matrices, which the CPU's batched matmuls read directly; slots before heads measured
twice as slow per slot (transposes). A loop over 64-slot blocks instead of one prefix took
about twice the time per slot on CPU (a copy and a loop trip per block; experiments/bench/).

Shapes: B batch, T query length, S key length or cache slots, L layers, K kv heads,
G = H // K query heads per kv head, Dh head dim.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# The prefix lengths the cached kernel compiles: multiples of KV_BLOCK slots (and the whole
# cache). A prefix wastes at most KV_BLOCK - 1 masked slots; the kernel compiles one branch per
# length, S / KV_BLOCK + 1 in all.
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
  """Attention of a chunk over the cache's filled slots and its own keys.

  Args:
    q: [B, T, K, G, Dh] the chunk's queries (compute dtype).
    k, v: [B, T, K, Dh] the chunk's own keys and values (not yet in the cache).
    cache_k, cache_v: [L, B, K, S, Dh] every layer's cache (see KVCache); slots < write_index
      are filled. Passed whole (not sliced per layer) so that only the filled prefix is read.
    layer: [] int32, this layer's index into L.
    mask: [B, T, S] bool over all slots, the chunk's own keys at slots write_index + [0, T).
    write_index: [] int32, the number of filled slots.

  Returns:
    [B, T, K, G, Dh] in q's dtype.
  """
  b, t, n_kv, g, dh = q.shape
  slots = cache_k.shape[3]
  block = min(KV_BLOCK, slots)
  q = q.transpose(0, 2, 3, 1, 4)  # [B, K, G, T, Dh]: (b, k) lead, as in the cache.

  init = (jnp.full((b, n_kv, g, t), _FLOOR, jnp.float32), jnp.zeros((b, n_kv, g, t), jnp.float32),
          jnp.zeros((b, n_kv, g, t, dh), jnp.float32))

  def read_prefix(length: int):
    """Folds the first `length` slots (static) into the softmax; those past write_index masked."""
    if length == 0:
      return init
    keys = jax.lax.dynamic_slice(cache_k, (layer, 0, 0, 0, 0), (1, b, n_kv, length, dh))[0]
    values = jax.lax.dynamic_slice(cache_v, (layer, 0, 0, 0, 0), (1, b, n_kv, length, dh))[0]
    valid = mask[:, :, :length] & (jnp.arange(length) < write_index)
    return _online_update(init, q, keys, values, valid)

  lengths = [min(i * block, slots) for i in range(-(-slots // block) + 1)]
  filled_blocks = (write_index + block - 1) // block
  carry = jax.lax.switch(filled_blocks, [functools.partial(read_prefix, n) for n in lengths])
  own = jax.lax.dynamic_slice_in_dim(mask, write_index, t, axis=2)
  _, l, acc = _online_update(carry, q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), own)
  return (acc / l[..., None]).transpose(0, 3, 1, 2, 4).astype(q.dtype)
