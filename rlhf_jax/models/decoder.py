"""The decoder trunk: embeddings, scanned pre-norm blocks, final norm.

One implementation covers GPT-2/GPT-3 (learned positions, LayerNorm, GELU, tied), GPT-NeoX/Pythia
(parallel residual, partial rotary), Llama 2/3 (RMSNorm, rotary with scaling, SwiGLU, GQA) and
Qwen2 (qkv biases): every `ModelConfig` switch changes the computation, so imported weights map
one to one. Rotary uses the "rotate_half" layout of HF Llama/NeoX (no weight permutation).

Parameters carry logical axis names (see `sharding.RULES`); activations are constrained by
logical names only. Shapes: B batch, T query length, S key length (T, or the cache length),
D d_model, H heads, K kv heads, G = H // K, Dh head dim, F d_ff, V vocab, L layers.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.attention import cached_attention, dense_attention
from rlhf_jax.models.cache import KVCache
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.sharding import constrain

BTD = ('act_batch', 'act_length', 'act_embed')
BTHD = ('act_batch', 'act_length', 'act_heads', 'act_kv')
BTKD = ('act_batch', 'act_length', 'act_kv_heads', 'act_kv')
INIT_STD = 0.02  # GPT-2/GPT-3 initialisation.


def _init(names, std=INIT_STD):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _resid_std(c: ModelConfig) -> float:
  # GPT-2's "modified initialization": residual-path outputs scaled by 1/sqrt(#residual adds).
  return INIT_STD / np.sqrt(2 * c.n_layers)


@jax.custom_vjp
def residual_projection(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [..., I] @ kernel [I, D]: a branch's output projection into the residual stream.

  The same product as a dense layer; only the kernel gradient is arranged differently. Its
  cotangent g is the residual stream's gradient, which in the backward pass is a running sum over
  the layers above. JAX's rule computes the kernel gradient as (g^T x)^T, so XLA transposes g,
  and on CPU it fuses the whole chain of adds that makes g into each such transpose: every layer
  re-adds the contributions of all layers above it (15% of the tiny PPO update's op time,
  experiments/bench/README.md). Contracting x first (x^T g) transposes x instead, one array.
  """
  return jnp.dot(x, kernel)


def _residual_projection_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _residual_projection_bwd(residuals, g):
  x, kernel = residuals
  rows = lambda a: a.reshape(-1, a.shape[-1])
  d_kernel = jax.lax.dot_general(rows(x), rows(g), (((0,), (0,)), ((), ())))
  return jnp.dot(g, kernel.T), d_kernel


residual_projection.defvjp(_residual_projection_fwd, _residual_projection_bwd)


class ResidualOut(nn.Module):
  """The dense layer that ends a branch (attention `out`, MLP `wo`), via `residual_projection`.

  Parameters as nn.Dense / nn.DenseGeneral over the trailing `len(kernel_axes) - 1` input axes:
  'kernel' [*inputs, D] and, with `use_bias`, 'bias' [D].
  """
  config: ModelConfig
  kernel_axes: tuple[str, ...]
  std: float

  @nn.compact
  def __call__(self, x):  # [B, T, *inputs] -> [B, T, D]
    c = self.config
    n_in = len(self.kernel_axes) - 1
    kernel = self.param('kernel', _init(self.kernel_axes, self.std),
                        x.shape[-n_in:] + (c.d_model,), c.param_dtype)
    y = residual_projection(x.reshape(x.shape[:-n_in] + (-1,)).astype(c.dtype),
                            kernel.reshape(-1, c.d_model).astype(c.dtype))
    if c.use_bias:
      y = y + self.param('bias', _zeros(self.kernel_axes[-1:]), (c.d_model,),
                         c.param_dtype).astype(c.dtype)
    return y


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Position ids counting real tokens only, so padding never shifts them.

  Args:
    mask: [B, T] bool, True for real tokens.

  Returns:
    [B, T] int32: cumsum(mask) - 1 clipped at 0 (padding before the first token gets 0).
  """
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def rope_inv_freq(c: ModelConfig) -> np.ndarray:
  """Rotary inverse frequencies [rot_dim // 2], with the config's context-extension scaling."""
  rot_dim = int(c.d_head * c.rotary_pct)
  inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim))
  if c.rope_scaling is None:
    return inv_freq
  kind, factor = c.rope_scaling[0], float(c.rope_scaling[1])
  if kind == 'linear':
    return inv_freq / factor
  if kind != 'llama3':
    raise ValueError(f'rope_scaling {c.rope_scaling!r} unknown')
  # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.
  low_ff, high_ff, old_len = (float(v) for v in c.rope_scaling[2:5])
  wavelen = 2 * np.pi / inv_freq
  smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
  scaled = np.where(wavelen > old_len / low_ff, inv_freq / factor, inv_freq)
  medium = (wavelen >= old_len / high_ff) & (wavelen <= old_len / low_ff)
  return np.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


def rotary_tables(c: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos and sin [B, T, rot_dim] in float32 for integer positions [B, T]."""
  inv_freq = jnp.asarray(rope_inv_freq(c), jnp.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, rot_dim // 2]
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the first rot_dim dims of each head of x [B, T, H, Dh] ("rotate_half" layout)."""
  rot_dim = cos.shape[-1]
  xr, xp = x[..., :rot_dim].astype(jnp.float32), x[..., rot_dim:]
  half = rot_dim // 2
  rotated = jnp.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
  xr = xr * cos[:, :, None] + rotated * sin[:, :, None]
  return jnp.concatenate([xr.astype(x.dtype), xp], axis=-1)


def attention_masks(q_pos, k_pos, q_slot, k_slot, key_valid, window: Optional[int]):
  """Causal + key-padding mask, and the banded variant when `window` is set.

  Args:
    q_pos, k_pos: [B, T] / [B, S] token positions (the band is measured in positions, so
      padding inside the window does not eat into it).
    q_slot, k_slot: [T] / [S] storage slots; slot order is time order (causality).
    key_valid: [B, S] bool.
    window: band width (keys with q_pos - k_pos < window), or None for dense only.

  Returns:
    (dense, banded) [B, T, S] bool masks; banded is None when window is None.
  """
  dense = (k_slot[None, None, :] <= q_slot[None, :, None]) & key_valid[:, None, :]
  if window is None:
    return dense, None
  return dense, dense & (q_pos[:, :, None] - k_pos[:, None, :] < window)


class Norm(nn.Module):
  """LayerNorm (bias iff use_bias) or RMSNorm, computed in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x):  # [..., D]
    c = self.config
    xf = x.astype(jnp.float32)
    if c.norm == 'layernorm':
      xf = xf - xf.mean(-1, keepdims=True)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + c.norm_eps)
    y = y * self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                       (c.d_model,), c.param_dtype)
    if c.norm == 'layernorm' and c.use_bias:
      y = y + self.param('bias', _zeros(('embed',)), (c.d_model,), c.param_dtype)
    return y.astype(c.dtype)


class Attention(nn.Module):
  """Multi-head / grouped-query self-attention with optional rotary and KV cache."""
  config: ModelConfig
  deterministic: bool

  def _proj(self, x, heads, name, names):
    c = self.config
    bias = c.use_bias or c.qkv_bias
    return nn.DenseGeneral((heads, c.d_head), use_bias=bias, dtype=c.dtype,
                           param_dtype=c.param_dtype, kernel_init=_init(('embed',) + names),
                           bias_init=_zeros(names), name=name)(x)

  @nn.compact
  def __call__(self, x, mask, rope, cache, layer):
    """Self-attention of a chunk, over its own keys or over a KV cache plus its own keys.

    Args:
      x: [B, T, D].
      mask: [B, T, S] bool; without a cache S = T, with one S is the cache's slot count and the
        chunk's own keys sit at slots write_index + [0, T).
      rope: (cos, sin) [B, T, rot_dim], or None for learned positions.
      cache: None, or (k, v, write_index): every layer's cache [L, B, K, S, Dh] (read only; the
        caller writes this chunk's keys once for all layers) and the number of filled slots.
      layer: [] int32, this layer's index into the cache's L axis.

    Returns:
      (out [B, T, D], this chunk's (k, v) [B, T, K, Dh] when there is a cache, else None).
    """
    c = self.config
    q = constrain(self._proj(x, c.n_heads, 'query', ('heads', 'kv')), BTHD)
    k = constrain(self._proj(x, c.kv_heads, 'key', ('kv_heads', 'kv')), BTKD)
    v = constrain(self._proj(x, c.kv_heads, 'value', ('kv_heads', 'kv')), BTKD)
    if rope is not None:
      q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    b, t, _, _ = q.shape
    q = q.reshape(b, t, c.kv_heads, c.n_heads // c.kv_heads, c.d_head)
    if cache is None:
      dropout = lambda p: nn.Dropout(c.attn_dropout)(p, deterministic=self.deterministic)
      out = dense_attention(q, k, v, mask, dropout)
    else:
      # Decoding is inference only: the cached path has no attention dropout.
      out = cached_attention(q, k, v, *cache[:2], layer, mask, cache[2])
    out = out.reshape(b, t, c.n_heads, c.d_head)
    out = ResidualOut(c, ('heads', 'kv', 'embed'), _resid_std(c), name='out')(
        constrain(out, BTHD))
    return out, None if cache is None else (k, v)


class Mlp(nn.Module):
  """GELU (two matrices, tanh approximation as GPT-2/3) or SwiGLU (three matrices)."""
  config: ModelConfig

  def _dense(self, x, features, names, name):
    c = self.config
    return nn.Dense(features, use_bias=c.use_bias, dtype=c.dtype, param_dtype=c.param_dtype,
                    kernel_init=_init(names), bias_init=_zeros(names[-1:]), name=name)(x)

  @nn.compact
  def __call__(self, x):  # [B, T, D] -> [B, T, D]
    c = self.config
    act = ('act_batch', 'act_length', 'act_mlp')
    if c.mlp == 'swiglu':
      gate = self._dense(x, c.d_ff, ('embed', 'mlp'), 'wi_gate')
      h = nn.silu(gate) * self._dense(x, c.d_ff, ('embed', 'mlp'), 'wi_up')
    else:
      # GPT-2/3 use the tanh approximation; GPT-NeoX/Pythia the exact erf form.
      h = nn.gelu(self._dense(x, c.d_ff, ('embed', 'mlp'), 'wi'), approximate=c.mlp == 'gelu')
    return ResidualOut(c, ('mlp', 'embed'), _resid_std(c), name='wo')(constrain(h, act))


class Block(nn.Module):
  """One pre-norm layer; the scan body (carry x, scanned per-layer inputs, broadcast context)."""
  config: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x, index, ctx):
    """x [B, T, D]; index [] the layer's number (scanned); ctx = (rope, dense mask, banded mask
    or None, cache (k, v, write_index) or None), broadcast to every layer (see Attention).
    Returns (x, this chunk's (k, v) [B, T, K, Dh] or None)."""
    c = self.config
    rope, dense, banded, cache = ctx
    mask = dense if banded is None else jnp.where(index % 2 == 1, banded, dense)
    drop = lambda y: nn.Dropout(c.resid_dropout)(y, deterministic=self.deterministic)
    attn = Attention(c, self.deterministic, name='attn')
    attn_out, kv = attn(Norm(c, name='ln_attn')(x), mask, rope, cache, index)
    if c.parallel_residual:  # NeoX: both branches read x.
      x = x + drop(attn_out) + drop(Mlp(c, name='mlp')(Norm(c, name='ln_mlp')(x)))
    else:
      x = x + drop(attn_out)
      x = x + drop(Mlp(c, name='mlp')(Norm(c, name='ln_mlp')(x)))
    return constrain(x, BTD), kv


_REMAT_POLICIES = {'full': None, 'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


class Trunk(nn.Module):
  """Embeddings, n_layers scanned blocks (params lead with a 'layers' axis), final norm.

  `deterministic` is an attribute (not a call argument) because dropout needs it static inside
  the scanned, rematerialised body.
  """
  config: ModelConfig
  deterministic: bool = True

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.vocab_size, c.d_model, dtype=c.dtype, param_dtype=c.param_dtype,
                          embedding_init=_init(('vocab', 'embed')))
    if c.positions == 'learned':
      self.pos_embed = nn.Embed(c.max_len, c.d_model, dtype=c.dtype, param_dtype=c.param_dtype,
                                embedding_init=_init((None, 'embed'), 0.01))
    block = Block
    if c.remat != 'none':
      block = nn.remat(Block, prevent_cse=False, policy=_REMAT_POLICIES[c.remat])
    self.layers = nn.scan(block, variable_axes={'params': 0},
                          split_rngs={'params': True, 'dropout': True}, in_axes=(0, nn.broadcast),
                          length=c.n_layers, unroll=c.scan_unroll,
                          metadata_params={nn.PARTITION_NAME: 'layers'})(
                              c, self.deterministic)
    self.ln_f = Norm(c)
    self.embed_drop = nn.Dropout(c.embed_dropout)

  def __call__(self, tokens, mask, cache: Optional[KVCache] = None):
    """tokens, mask [B, T] -> (hidden [B, T, D] after the final norm, updated cache or None)."""
    c = self.config
    pos, q_slot, k_slot, key_valid, k_pos, write_index = _layout(mask, cache)
    x = self.embed(tokens)
    if c.positions == 'learned':
      x = x + self.pos_embed(pos)
    x = constrain(self.embed_drop(x, deterministic=self.deterministic), BTD)
    rope = rotary_tables(c, pos) if c.positions == 'rotary' else None
    window = c.local_window if c.attention_pattern == 'alternating' else None
    dense, banded = attention_masks(pos, k_pos, q_slot, k_slot, key_valid, window)
    # The whole cache is broadcast to every layer rather than scanned over: a scanned input
    # would slice out (copy) each layer's full [B, K, S, Dh] every step, filled or not.
    kv = None if cache is None else (cache.k, cache.v, write_index)
    x, kv = self.layers(x, jnp.arange(c.n_layers), (rope, dense, banded, kv))
    new_cache = None
    if cache is not None:
      # One in-place write of every layer's new keys/values [L, B, T, K, Dh] at slot `index`.
      write = lambda full, new: jax.lax.dynamic_update_slice(
          full, new.transpose(0, 1, 3, 2, 4).astype(full.dtype), (0, 0, 0, write_index, 0))
      new_cache = cache.replace(k=write(cache.k, kv[0]), v=write(cache.v, kv[1]), mask=key_valid,
                                index=cache.index + tokens.shape[1],
                                positions=cache.positions + mask.sum(axis=1, dtype=jnp.int32))
    return self.ln_f(x), new_cache

  def attend(self, h: jax.Array) -> jax.Array:
    """Tied LM head: hidden [B, T, D] -> logits [B, T, V] float32 (fp32 accumulation)."""
    emb = self.embed.embedding.astype(self.config.dtype)
    return jnp.einsum('btd,vd->btv', h, emb, preferred_element_type=jnp.float32)


def _layout(mask: jax.Array, cache: Optional[KVCache]) -> tuple[Any, ...]:
  """Positions, slots and key validity of a full forward, or of a chunk written into `cache`."""
  t = mask.shape[1]
  if cache is None:
    pos = positions_from_mask(mask)
    slots = jnp.arange(t)
    return pos, slots, slots, mask, pos, 0
  pos = cache.positions[:, None] + positions_from_mask(mask)
  key_valid = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
  # Cached keys got consecutive positions from 0 in slot order, so a running count recovers them.
  k_pos = jnp.cumsum(key_valid.astype(jnp.int32), axis=1) - 1
  return (pos, cache.index + jnp.arange(t), jnp.arange(key_valid.shape[1]), key_valid, k_pos,
          cache.index)
