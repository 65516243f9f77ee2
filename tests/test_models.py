"""Decoder tests against a slow, obvious NumPy reference (float64, loops over layers and heads)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.config_lib import GEOMETRIES
from rlhf_jax.models import LanguageModel, ScalarModel, attention, init_cache, last_token_value
from rlhf_jax.models.decoder import attention_masks, residual_projection, rope_inv_freq

# fp32 against a float64 reference: rounding through two layers of O(1) activations stays near
# 1e-6, while a real bug (a leaked pad key, a shifted position) moves logits by 1e-2 or more
# because the test params are O(1) (see `_params`).
TOL = dict(rtol=1e-5, atol=5e-5)

_SMALL = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_ff=48, vocab_size=64, max_len=32)
FLAVOURS = {
    # GPT-3: learned positions, LayerNorm, GELU, tied, alternating dense / banded (window 3).
    'gpt3': GEOMETRIES['tiny'].replace(attention_pattern='alternating', local_window=3, **_SMALL),
    # Llama 3: RMSNorm, SwiGLU, GQA (2 kv heads), untied, llama3 rope scaling whose thresholds
    # put one frequency in the interpolated band and two in the scaled one.
    'llama': GEOMETRIES['llama-tiny'].replace(
        n_kv_heads=2, rope_scaling=('llama3', 8.0, 1.0, 4.0, 8), **_SMALL),
    # GPT-NeoX / Pythia: parallel residual, partial rotary, LayerNorm with bias, untied.
    'neox': GEOMETRIES['tiny'].replace(positions='rotary', rotary_pct=0.5, parallel_residual=True,
                                       tie_embeddings=False, **_SMALL),
    # Qwen2-like: biases on q/k/v only, one kv head (multi-query), linear rope scaling.
    'qwen2': GEOMETRIES['llama-tiny'].replace(n_kv_heads=1, qkv_bias=True,
                                              rope_scaling=('linear', 2.0), **_SMALL),
}


def init_params(c, model_cls=LanguageModel, seed=0):
  tokens = jnp.zeros((1, 4), jnp.int32)
  init = jax.jit(lambda key: model_cls(c).init(key, tokens, tokens > -1))  # eager init is slow
  return nn.unbox(init(jax.random.key(seed)))['params']


@functools.lru_cache(maxsize=None)
def _params(c):
  """Random params of O(1) spread (norm scales around 1), so attention is peaked, not uniform.

  Built in NumPy on the abstract tree: no init compile, and larger than the real init's 0.02 so a
  masking or position bug moves logits far beyond the tolerance.
  """
  rng = np.random.default_rng(0)
  tokens = jnp.zeros((1, 4), jnp.int32)
  abstract = nn.unbox(jax.eval_shape(
      lambda: LanguageModel(c).init(jax.random.key(0), tokens, tokens > -1)))['params']
  fill = lambda path, x: jnp.asarray(
      0.3 * rng.standard_normal(x.shape) + (path[-1].key == 'scale'), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.partial(jax.jit, static_argnums=0)
def _forward(c, params, tokens, mask):
  return LanguageModel(c).apply({'params': params}, tokens, mask)


# ---------------------------------------------------------------- slow reference


def _ref_norm(c, x, p):
  if c.norm == 'layernorm':
    x = x - x.mean(-1, keepdims=True)
  y = x / np.sqrt((x * x).mean(-1, keepdims=True) + c.norm_eps) * p['scale']
  return y + p['bias'] if 'bias' in p else y


def _ref_rotate(c, x):
  """x [T, Dh]: rotate each pair (i, i + rot/2) by angle position * inv_freq[i]."""
  inv_freq = rope_inv_freq(c)
  half = len(inv_freq)
  out = x.copy()
  for t in range(x.shape[0]):
    for i in range(half):
      a, b, ang = x[t, i], x[t, i + half], t * inv_freq[i]
      out[t, i] = a * np.cos(ang) - b * np.sin(ang)
      out[t, i + half] = b * np.cos(ang) + a * np.sin(ang)
  return out


def _ref_attention(c, h, p, banded):
  t = h.shape[0]
  proj = lambda name: np.einsum('td,dhk->thk', h, p[name]['kernel']) + p[name].get('bias', 0)
  q, k, v = proj('query'), proj('key'), proj('value')
  allowed = np.tril(np.ones((t, t), bool))
  if banded:
    allowed &= np.subtract.outer(np.arange(t), np.arange(t)) < c.local_window
  heads = []
  for head in range(c.n_heads):
    kv = head // (c.n_heads // c.kv_heads)  # HF repeat_kv grouping.
    qh, kh = q[:, head], k[:, kv]
    if c.positions == 'rotary':
      qh, kh = _ref_rotate(c, qh), _ref_rotate(c, kh)
    s = np.where(allowed, qh @ kh.T / np.sqrt(c.d_head), -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    heads.append((w / w.sum(-1, keepdims=True)) @ v[:, kv])
  out = np.einsum('thk,hkd->td', np.stack(heads, 1), p['out']['kernel'])
  return out + p['out'].get('bias', 0)


def _ref_mlp(c, h, p):
  dense = lambda name, x: x @ p[name]['kernel'] + p[name].get('bias', 0)
  if c.mlp == 'swiglu':
    g = dense('wi_gate', h)
    return dense('wo', g / (1 + np.exp(-g)) * dense('wi_up', h))
  u = dense('wi', h)
  return dense('wo', 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3))))


def reference_hidden(c, params, tokens):
  """Final-norm hidden states [T, D] of one unpadded sequence tokens [T]."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = p['trunk']['embed']['embedding'][tokens]
  if c.positions == 'learned':
    x = x + p['trunk']['pos_embed']['embedding'][:len(tokens)]
  for i in range(c.n_layers):
    lp = jax.tree.map(lambda a: a[i], p['trunk']['layers'])
    banded = c.attention_pattern == 'alternating' and i % 2 == 1
    a = _ref_attention(c, _ref_norm(c, x, lp['ln_attn']), lp['attn'], banded)
    if c.parallel_residual:
      x = x + a + _ref_mlp(c, _ref_norm(c, x, lp['ln_mlp']), lp['mlp'])
    else:
      x = x + a
      x = x + _ref_mlp(c, _ref_norm(c, x, lp['ln_mlp']), lp['mlp'])
  return _ref_norm(c, x, p['trunk']['ln_f'])


def reference_logits(c, params, tokens):
  """Logits [T, V] of one unpadded sequence tokens [T]."""
  w = params['trunk']['embed']['embedding'].T if c.tie_embeddings else params['lm_head']['kernel']
  return reference_hidden(c, params, tokens) @ np.asarray(w, np.float64)


# ---------------------------------------------------------------- tests


def _tokens(c, b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 1, c.vocab_size)


@pytest.mark.parametrize('flavour', FLAVOURS)
@pytest.mark.slow
def test_forward_matches_reference(flavour):
  c = FLAVOURS[flavour]
  params = _params(c)
  tokens = _tokens(c, 2, 9)
  logits = _forward(c, params, tokens, jnp.ones_like(tokens, bool))
  assert logits.dtype == jnp.float32 and logits.shape == (2, 9, c.vocab_size)
  for row in range(2):
    np.testing.assert_allclose(logits[row], reference_logits(c, params, np.asarray(tokens[row])),
                               **TOL)
  assert ('lm_head' in params) == (not c.tie_embeddings)


@pytest.mark.parametrize('flavour', ['gpt3', 'neox'])  # tied and untied LM heads
@pytest.mark.slow
def test_logits_at_selected_positions(flavour):
  """`positions` computes the same logits as the full forward, at those positions only."""
  c = FLAVOURS[flavour]
  params, tokens = _params(c), _tokens(c, 2, 9)
  mask = jnp.ones_like(tokens, bool)
  full = _forward(c, params, tokens, mask)
  for positions in (slice(3, -1), slice(-1, None)):
    part = LanguageModel(c).apply({'params': params}, tokens, mask, positions=positions)
    np.testing.assert_allclose(part, full[:, positions], **TOL)


@pytest.mark.parametrize('flavour', ['gpt3', 'llama'])
@pytest.mark.slow
def test_unrolled_layers_same_forward_and_gradient(flavour):
  """Unrolling the layer loop (training steps on CPU presets) changes compilation only."""
  c = FLAVOURS[flavour]
  params, tokens = _params(c), _tokens(c, 2, 9)
  mask = jnp.ones_like(tokens, bool)

  def loss(params, config):
    return jnp.mean(jax.nn.log_softmax(_forward(config, params, tokens, mask))[..., 0])

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (want, want_grads), (got, got_grads) = grad(params, c), grad(params, c.unrolled())
  assert c.unrolled().scan_unroll == c.n_layers > 1
  np.testing.assert_allclose(got, want, **TOL)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, **TOL)


def test_residual_projection_is_a_dense_product_with_its_gradient():
  """The branch output projection's own backward equals autodiff of the plain product."""
  x = jax.random.normal(jax.random.key(0), (2, 3, 5))
  kernel = jax.random.normal(jax.random.key(1), (5, 4))
  cotangent = jax.random.normal(jax.random.key(2), (2, 3, 4))
  got, got_vjp = jax.vjp(residual_projection, x, kernel)
  want, want_vjp = jax.vjp(lambda a, b: jnp.einsum('bti,id->btd', a, b), x, kernel)
  np.testing.assert_allclose(got, want, **TOL)
  for g, w in zip(got_vjp(cotangent), want_vjp(cotangent)):
    np.testing.assert_allclose(g, w, **TOL)


def test_band_changes_output():
  """The band really bites: the alternating model differs from its dense twin past the window."""
  c = FLAVOURS['gpt3']
  params = _params(c)
  tokens = _tokens(c, 1, 9)
  mask = jnp.ones_like(tokens, bool)
  banded = _forward(c, params, tokens, mask)
  dense = _forward(c.replace(attention_pattern='dense'), params, tokens, mask)
  np.testing.assert_allclose(banded[:, :c.local_window], dense[:, :c.local_window], **TOL)
  assert np.abs(banded[:, c.local_window:] - dense[:, c.local_window:]).max(-1).min() > 1e-2


def _pad(tokens, lengths, total, left):
  """Rows tokens[i, :lengths[i]] padded to `total` on the left or right, with masks."""
  out = np.zeros((len(lengths), total), np.int32)
  mask = np.zeros((len(lengths), total), bool)
  for i, n in enumerate(lengths):
    span = slice(total - n, total) if left else slice(0, n)
    out[i, span], mask[i, span] = tokens[i, :n], True
  return jnp.asarray(out), jnp.asarray(mask)


@pytest.mark.parametrize('flavour', FLAVOURS)
@pytest.mark.parametrize('left', [True, False], ids=['left', 'right'])
def test_padding_invariance(flavour, left):
  c = FLAVOURS[flavour]
  params = _params(c)
  tokens = np.asarray(_tokens(c, 3, 8))
  lengths = [8, 5, 2]
  padded, mask = _pad(tokens, lengths, 11, left)
  logits = _forward(c, params, padded, mask)
  for i, n in enumerate(lengths):
    # The reference is the unpadded forward (test_forward_matches_reference), without a compile.
    np.testing.assert_allclose(logits[i][mask[i]], reference_logits(c, params, tokens[i, :n]),
                               **TOL)


@pytest.mark.parametrize('flavour', ['gpt3', 'llama'])
@pytest.mark.parametrize('block', [attention.KV_BLOCK, 4], ids=['one_block', 'blocks_of_4'])
@pytest.mark.slow
def test_cache_prefill_and_steps_match_full_forward(flavour, block, monkeypatch):
  """Left-padded prompts, prefill, then one token at a time == one full forward.

  With blocks of 4 the 11-slot cache is read as prefixes of 4, 8 and 11 slots (the last one the
  whole cache), and the shortest prompt's padding fills the whole first block.
  """
  monkeypatch.setattr(attention, 'KV_BLOCK', block)
  c = FLAVOURS[flavour]
  params = _params(c)
  n_new = 5
  prompts, pmask = _pad(np.asarray(_tokens(c, 3, 6)), [6, 3, 1], 6, left=True)
  new = _tokens(c, 3, n_new, seed=1)
  full_tokens = jnp.concatenate([prompts, new], 1)
  full_mask = jnp.concatenate([pmask, jnp.ones_like(new, bool)], 1)
  full = _forward(c, params, full_tokens, full_mask)
  step = jax.jit(lambda p, t, m, cache: LanguageModel(c).apply({'params': p}, t, m, cache=cache))
  logits, cache = step(params, prompts, pmask, init_cache(c, 3, 6 + n_new))
  np.testing.assert_allclose(logits[pmask], full[:, :6][pmask], **TOL)
  for i in range(n_new):
    logits, cache = step(params, new[:, i:i + 1], jnp.ones((3, 1), bool), cache)
    np.testing.assert_allclose(logits[:, 0], full[:, 6 + i], **TOL)
  assert int(cache.index) == 6 + n_new
  np.testing.assert_array_equal(cache.positions, np.array([6, 3, 1]) + n_new)


@pytest.mark.parametrize('write_index, t', [(0, 5), (3, 2), (8, 1), (9, 3), (13, 1)])
@pytest.mark.slow
def test_prefix_cached_attention_matches_dense(write_index, t, monkeypatch):
  """Prefixes in blocks of 4 of a 14-slot cache == dense attention over the cache, chunk written.

  Covers no filled block (prefill), partial and whole blocks, the last prefix being the whole
  cache (13 filled slots read as 14), rows whose left padding fills whole blocks, a band, GQA,
  and stale slots past the chunk (random, never read).
  """
  monkeypatch.setattr(attention, 'KV_BLOCK', 4)
  b, n_kv, g, dh, slots, layer = 3, 2, 2, 8, 14, 1
  keys = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(keys[0], (b, t, n_kv, g, dh))
  k, v = (jax.random.normal(key, (b, t, n_kv, dh)) for key in keys[1:3])
  cache_k, cache_v = (jax.random.normal(key, (2, b, n_kv, slots, dh)) for key in keys[3:])
  k_slot = jnp.arange(slots)
  q_slot = write_index + jnp.arange(t)
  key_valid = k_slot[None] >= jnp.array([0, 5, 9])[:, None]  # left padding per row
  k_pos = jnp.cumsum(key_valid, axis=1) - 1
  _, mask = attention_masks(k_pos[:, q_slot], k_pos, q_slot, k_slot, key_valid, window=6)
  got = attention.cached_attention(q, k, v, cache_k, cache_v, layer, mask, write_index)
  write = lambda cache, new: jax.lax.dynamic_update_slice(
      cache[layer].transpose(0, 2, 1, 3), new, (0, write_index, 0, 0))  # dense layout [B, S, K, Dh]
  written = mask & (k_slot < write_index + t)
  want = attention.dense_attention(q, write(cache_k, k), write(cache_v, v), written, lambda p: p)
  real = np.asarray(key_valid[:, q_slot])  # padding queries have no valid key: output unused
  assert real.any()
  np.testing.assert_allclose(got[real], want[real], **TOL)


def test_scan_axis_and_logical_names():
  c = FLAVOURS['llama'].replace(n_layers=3)
  tokens = jnp.zeros((1, 4), jnp.int32)
  boxed = jax.eval_shape(LanguageModel(c).init, jax.random.key(0), tokens, tokens > -1)['params']
  layers = boxed['trunk']['layers']
  boxes = jax.tree.leaves(layers, is_leaf=nn.meta.is_axis_metadata)
  assert all(x.value.shape[0] == 3 for x in boxes)
  specs = nn.get_partition_spec(boxed)
  layer = lambda *path: tuple(functools.reduce(dict.get, path, specs['trunk']['layers']))
  assert layer('attn', 'query', 'kernel') == ('layers', 'embed', 'heads', 'kv')
  assert layer('attn', 'key', 'kernel') == ('layers', 'embed', 'kv_heads', 'kv')
  assert layer('attn', 'out', 'kernel') == ('layers', 'heads', 'kv', 'embed')
  assert layer('mlp', 'wo', 'kernel') == ('layers', 'mlp', 'embed')
  assert tuple(specs['trunk']['embed']['embedding']) == ('vocab', 'embed')
  assert tuple(specs['lm_head']['kernel']) == ('embed', 'vocab')


@pytest.mark.slow
def test_dropout_only_when_not_deterministic():
  c = FLAVOURS['gpt3'].replace(embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.2)
  params = _params(c)
  tokens = _tokens(c, 2, 8)
  mask = jnp.ones_like(tokens, bool)
  apply = jax.jit(lambda det, seed: LanguageModel(c).apply(
      {'params': params}, tokens, mask, deterministic=det, rngs={'dropout': jax.random.key(seed)}),
                  static_argnums=0)
  no_dropout = np.stack([reference_logits(c, params, np.asarray(row)) for row in tokens])
  np.testing.assert_allclose(apply(True, 0), no_dropout, **TOL)
  assert np.abs(apply(False, 0) - no_dropout).max() > 1e-2
  assert np.abs(apply(False, 0) - apply(False, 1)).max() > 1e-2
  np.testing.assert_allclose(apply(False, 0), apply(False, 0), **TOL)


@pytest.mark.slow
def test_remat_policies_identical():
  base = FLAVOURS['llama']
  params = _params(base)
  tokens = _tokens(base, 2, 8)
  mask = jnp.ones_like(tokens, bool)

  def loss_and_grad(c):
    loss = lambda p: jnp.mean(LanguageModel(c).apply({'params': p}, tokens, mask) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  ref = loss_and_grad(base)
  for policy in ('full', 'dots'):
    out = loss_and_grad(base.replace(remat=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), out, ref)


@pytest.mark.slow
def test_scalar_model_from_lm_trunk_and_last_token_value():
  c = FLAVOURS['neox']
  lm_params = _params(c)
  sm_params = init_params(c, ScalarModel, seed=3)
  kernel = sm_params['scalar_head']['kernel']
  assert kernel.shape == (c.d_model, 1) and np.all(sm_params['scalar_head']['bias'] == 0)
  assert 0.5 < float(jnp.std(kernel)) * np.sqrt(c.d_model + 1) < 1.5
  sm_params = dict(sm_params, trunk=lm_params['trunk'])
  values_fn = jax.jit(lambda t, m: ScalarModel(c).apply({'params': sm_params}, t, m))
  raw = np.asarray(_tokens(c, 2, 7))
  lengths = [7, 4]
  for left in (True, False):
    padded, mask = _pad(raw, lengths, 9, left)
    values = values_fn(padded, mask)
    assert values.dtype == jnp.float32 and values.shape == (2, 9)
    last = last_token_value(values, mask)
    for i, n in enumerate(lengths):
      head = jax.tree.map(lambda a: np.asarray(a, np.float64), sm_params['scalar_head'])
      alone = reference_hidden(c, sm_params, raw[i, :n]) @ head['kernel'][:, 0] + head['bias']
      np.testing.assert_allclose(values[i][mask[i]], alone, **TOL)
      np.testing.assert_allclose(last[i], alone[-1], **TOL)


@pytest.mark.slow
def test_bf16_compute_fp32_params():
  c = FLAVOURS['llama'].replace(dtype='bfloat16')
  tokens = jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(LanguageModel(c).init, jax.random.key(0), tokens, tokens > -1)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(abstract)))
  params = _params(c)
  tokens = _tokens(c, 2, 8)
  mask = jnp.ones_like(tokens, bool)
  logits = _forward(c, params, tokens, mask)
  assert logits.dtype == jnp.float32
  # bf16 keeps ~3 significant digits; a loose bound only checks it computes the same function.
  np.testing.assert_allclose(logits, _forward(c.replace(dtype='float32'), params, tokens, mask),
                             atol=0.15 * float(jnp.abs(logits).max()))


def test_rope_scaling_frequencies():
  """Against the HF formulas (`_compute_linear_scaling`, `_compute_llama3_parameters`)."""
  c = FLAVOURS['llama'].replace(rope_scaling=None, d_head=16)
  base = rope_inv_freq(c)
  np.testing.assert_allclose(rope_inv_freq(c.replace(rope_scaling=('linear', 4.0))), base / 4)
  scaled = rope_inv_freq(c.replace(rope_scaling=('llama3', 8.0, 1.0, 4.0, 64)))
  wavelen = 2 * np.pi / base
  expected = []
  for f, w in zip(base, wavelen):
    if w < 64 / 4:
      expected.append(f)
    elif w > 64 / 1:
      expected.append(f / 8)
    else:
      s = (64 / w - 1) / (4 - 1)
      expected.append((1 - s) * f / 8 + s * f)
  np.testing.assert_allclose(scaled, expected)
  assert len({'keep' if w < 16 else 'scale' if w > 64 else 'mix' for w in wavelen}) == 3


@pytest.mark.slow
def test_padding_vocab_rows_are_masked():
  c = FLAVOURS['gpt3'].replace(real_vocab_size=FLAVOURS['gpt3'].vocab_size - 5)
  params = init_params(c)
  tokens = jnp.ones((2, 6), jnp.int32)
  logits = LanguageModel(c).apply({'params': params}, tokens, tokens > 0)
  assert np.all(np.asarray(logits[..., c.real_vocab_size:]) == -1e9)
  unmasked = LanguageModel(c.replace(real_vocab_size=None)).apply({'params': params}, tokens,
                                                                  tokens > 0)
  np.testing.assert_array_equal(logits[..., :c.real_vocab_size], unmasked[..., :c.real_vocab_size])
