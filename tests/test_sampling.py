"""Sampler tests: every output is checked against a plain full forward of the finished sequence."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import sharding
from rlhf_jax.config_lib import GEOMETRIES
from rlhf_jax.models import LanguageModel
from rlhf_jax.sampling import filter_logits, sample

# Same fp32 tolerance as test_models: rounding stays near 1e-6 for O(1) logits.
TOL = dict(rtol=1e-5, atol=5e-5)

# Llama flavour with GQA; a 16-token vocabulary so frequency tests fill every bin.
CONFIG = GEOMETRIES['llama-tiny'].replace(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
                                          d_head=8, d_ff=48, vocab_size=16, max_len=32)
GPT3 = GEOMETRIES['tiny'].replace(n_layers=2, d_model=32, n_heads=4, d_head=8, d_ff=48,
                                  vocab_size=16, max_len=32, attention_pattern='alternating',
                                  local_window=3)


def _abstract(c):
  tokens = jnp.zeros((1, 4), jnp.int32)
  return jax.eval_shape(lambda: LanguageModel(c).init(jax.random.key(0), tokens, tokens > -1))


def _params(c, spread=0.3):
  """Random params with O(1) logits (the real init's are nearly uniform, hiding bugs)."""
  rng = np.random.default_rng(0)
  fill = lambda path, x: jnp.asarray(
      spread * rng.standard_normal(x.shape) + (path[-1].key == 'scale'), jnp.float32)
  return jax.tree_util.tree_map_with_path(fill, nn.unbox(_abstract(c))['params'])


def _prompts(c, lengths, p):
  """Left-padded random prompts [B, P] and masks."""
  rng = np.random.default_rng(1)
  tokens = np.zeros((len(lengths), p), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, p - n:] = rng.integers(1, c.vocab_size, n)
  return jnp.asarray(tokens), jnp.asarray(tokens > 0)


@functools.partial(jax.jit, static_argnums=0)
def _forward(c, params, tokens, mask):
  return LanguageModel(c).apply({'params': params}, tokens, mask)


def _full_logits(c, params, prompts, pmask, out):
  """Full-forward logits [B, N, V] that predicted each response token."""
  tokens = jnp.concatenate([prompts, out.tokens], 1)
  mask = jnp.concatenate([pmask, out.mask], 1)
  logits = _forward(c, params, tokens, mask)
  p = prompts.shape[1]
  return logits[:, p - 1:-1]


@pytest.mark.parametrize('c', [CONFIG, GPT3], ids=['llama', 'gpt3'])
@pytest.mark.parametrize('temperature', [0.0, 0.7])
@pytest.mark.slow
def test_tokens_and_logprobs_match_full_forward(c, temperature):
  params = _params(c)
  prompts, pmask = _prompts(c, [5, 2, 3], 5)
  out = sample(params, c, prompts, pmask, jax.random.key(0), max_new_tokens=6,
               temperature=temperature)
  assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (3, 6)
  assert bool(out.mask.all())
  full = _full_logits(c, params, prompts, pmask, out)
  if temperature == 0.0:
    np.testing.assert_array_equal(out.tokens, jnp.argmax(full, -1))
  logprobs = jax.nn.log_softmax(full / (temperature or 1.0), -1)
  np.testing.assert_allclose(out.logprobs, jnp.take_along_axis(logprobs, out.tokens[..., None],
                                                               -1)[..., 0], **TOL)


def _first_token_freqs(params, temperature, n, **kw):
  """Frequencies [V] of the first sampled token over n copies of one prompt, and its logits."""
  prompt, pmask = _prompts(CONFIG, [3], 4)
  prompts, pmask = jnp.tile(prompt, (n, 1)), jnp.tile(pmask, (n, 1))
  out = sample(params, CONFIG, prompts, pmask, jax.random.key(42), max_new_tokens=1,
               temperature=temperature, **kw)
  logits = _forward(CONFIG, params, prompts[:1], pmask[:1])[0, -1]
  return np.bincount(np.asarray(out.tokens[:, 0]), minlength=CONFIG.vocab_size) / n, logits


def _assert_matches(freqs, probs, n):
  # Each count is Binomial(n, p): 5 standard deviations per bin make a false failure
  # < 16 bins x 6e-7 (and the seed is fixed, so the test is deterministic anyway), while a wrong
  # temperature or a truncation leak shifts some bin by far more at n = 20000.
  bound = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-9
  np.testing.assert_array_less(np.abs(freqs - probs), bound)


@pytest.mark.slow
def test_sampled_frequencies_match_softmax():
  n, temperature = 20000, 0.8
  freqs, logits = _first_token_freqs(_params(CONFIG, 0.15), temperature, n)
  probs = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
  assert (probs > 0.02).sum() >= 4  # a distribution with several live bins, not a near-argmax
  _assert_matches(freqs, probs, n)


@pytest.mark.parametrize('top_k, top_p', [(3, 1.0), (0, 0.6)])
@pytest.mark.slow
def test_top_k_top_p_restrict_support(top_k, top_p):
  n = 20000
  freqs, logits = _first_token_freqs(_params(CONFIG, 0.15), 1.0, n, top_k=top_k, top_p=top_p)
  probs = np.asarray(jax.nn.softmax(logits), np.float64)
  order = np.argsort(-probs)
  if top_k:
    keep = order[:top_k]
  else:  # smallest prefix of the sorted distribution whose mass reaches top_p
    before = np.cumsum(probs[order]) - probs[order]
    keep = order[before < top_p]
  assert 1 < len(keep) < CONFIG.vocab_size - 1
  expected = np.zeros_like(probs)
  expected[keep] = probs[keep] / probs[keep].sum()
  _assert_matches(freqs, expected, n)
  np.testing.assert_array_equal(np.nonzero(freqs)[0], np.sort(keep))


@pytest.mark.slow
def test_filter_logits_keeps_top_token():
  logits = jnp.array([[5.0, 1.0, 0.0, -1.0]])
  np.testing.assert_array_equal(filter_logits(logits, top_p=0.01) > -1e30, [[1, 0, 0, 0]])
  np.testing.assert_array_equal(filter_logits(logits, top_k=2) > -1e30, [[1, 1, 0, 0]])


@pytest.mark.slow
def test_eos_stops_and_masks():
  params = _params(CONFIG, 0.15)
  prompts, pmask = _prompts(CONFIG, [4, 2, 3, 1, 4, 2, 3, 1], 4)
  kw = dict(max_new_tokens=8, temperature=1.0)
  free = sample(params, CONFIG, prompts, pmask, jax.random.key(3), **kw)
  eos = int(np.bincount(np.asarray(free.tokens).ravel()).argmax())  # some rows must hit it
  out = sample(params, CONFIG, prompts, pmask, jax.random.key(3), eos_id=eos, pad_id=0, **kw)
  hit = np.asarray(free.tokens) == eos
  assert 0 < hit[:, :-1].any(axis=1).sum() < len(hit)
  for i in range(len(hit)):
    stop = int(np.argmax(hit[i])) if hit[i].any() else kw['max_new_tokens'] - 1
    live = np.arange(kw['max_new_tokens']) <= stop
    np.testing.assert_array_equal(out.mask[i], live)
    # Same rng stream: identical up to and including EOS, then padding with zero log-probs.
    np.testing.assert_array_equal(out.tokens[i][live], free.tokens[i][live])
    np.testing.assert_allclose(out.logprobs[i][live], free.logprobs[i][live], **TOL)
    assert np.all(np.asarray(out.tokens[i])[~live] == 0)
    assert np.all(np.asarray(out.logprobs[i])[~live] == 0)


@pytest.mark.slow
def test_sharded_sampling_matches_unsharded():
  params = _params(CONFIG)
  prompts, pmask = _prompts(CONFIG, [5, 2, 3, 4, 1, 5, 2, 3], 5)
  kw = dict(max_new_tokens=4, temperature=0.0)
  expected = sample(params, CONFIG, prompts, pmask, jax.random.key(0), **kw)
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with jax.set_mesh(mesh):
    shardings = nn.unbox(sharding.logical_shardings(_abstract(CONFIG), mesh))['params']
    sharded = jax.device_put(params, shardings)
    q = sharded['trunk']['layers']['attn']['query']['kernel']
    assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)  # embed / fsdp, heads / tensor
    batch = sharding.batch_sharding(mesh)
    out = sample(sharded, CONFIG, jax.device_put(prompts, batch), jax.device_put(pmask, batch),
                 jax.random.key(0), **kw)
  np.testing.assert_array_equal(out.tokens, expected.tokens)
  np.testing.assert_allclose(out.logprobs, expected.logprobs, **TOL)
