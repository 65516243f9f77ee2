"""make_experience and ppo_step: field consistency, ptx accumulation, EMA / KL updates, learning
on a toy reward, and sharded == unsharded."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import config_lib, experience, ppo, rl_math, sampling, sharding, state
from rlhf_jax.models import LanguageModel, ModelConfig, ScalarModel, last_token_value
from rlhf_jax.stages import ppo as ppo_stage

CFG = ModelConfig(vocab_size=64, n_layers=2, d_model=32, n_heads=4, d_head=8, d_ff=64, max_len=32)
P, N, B, M = 4, 6, 8, 4  # prompt length, response length, episodes, minibatch size
PAD, EOS = 0, 1
# float32 forward and backward passes of a tiny model; sums reordered by sharding or by a
# different (but equivalent) grouping of the computation differ by ~1e-6 relative.
TOL = dict(rtol=1e-5, atol=1e-5)


# The paper's PPO settings (configs/ppo.py at a paper geometry), which tests change one at a time.
PAPER = config_lib.load_config('configs/ppo.py:1.3b')


def make_settings(**kw):
  fields = {f.name: PAPER[f.name] for f in dataclasses.fields(ppo.PPOSettings)
            if f.name not in ppo_stage.BUILT_FIELDS}
  fields.update(policy_model=CFG, reward_model=CFG, policy_tx=optax.adam(1e-3),
                value_tx=optax.adam(1e-3), policy_lr=optax.constant_schedule(1e-3),
                value_lr=optax.constant_schedule(1e-3), response_len=N, eos_id=EOS, pad_id=PAD,
                score_fn=None, batch_size=B, minibatch_size=M)
  fields.update(kw)
  return ppo.PPOSettings(**fields)


@jax.jit
def scalar_forward(params, tokens, mask):  # jitted once: eager model calls are slow on CPU
  return ScalarModel(CFG).apply({'params': params}, tokens, mask)


def init(head, seed):
  return nn.unbox(state.init_params(CFG, head, jax.random.key(seed)))


def prompts(batch, seed=0):
  """Left-padded prompts of 1..P tokens, ids >= 2 (never pad or EOS)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, P + 1, batch)
  mask = np.arange(P)[None, :] >= (P - lengths)[:, None]
  tokens = np.where(mask, rng.integers(2, CFG.vocab_size, (batch, P)), PAD)
  return {'tokens': jnp.asarray(tokens, jnp.int32), 'mask': jnp.asarray(mask)}


def ptx_batch(leading, rows, length=8, seed=1):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, CFG.vocab_size, leading + (rows, length)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[..., -2:] = False  # some right padding
  return {'tokens': jnp.asarray(tokens), 'mask': jnp.asarray(mask), 'loss_mask': jnp.asarray(mask)}


@pytest.fixture(scope='module')
def setup():
  settings = make_settings(whiten_rewards=False, whiten_advantages=True)
  st = ppo.init_ppo_state(init('lm', 0), init('scalar', 1), 0.3, settings)
  frozen = ppo.Frozen(reference_params=init('lm', 2), reward_params=init('scalar', 3),
                      reward_bias=jnp.asarray(0.25, jnp.float32))
  batch = prompts(B)
  rng = jax.random.key(7)
  exp, metrics = jax.jit(functools.partial(ppo.make_experience, settings=settings))(
      st, frozen, batch, rng)
  return settings, st, frozen, batch, rng, exp, metrics


@pytest.mark.slow
def test_experience_fields_consistent(setup):
  settings, st, frozen, batch, rng, exp, metrics = setup
  out = sampling.sample(st.policy.params, CFG, batch['tokens'], batch['mask'], rng,
                        max_new_tokens=N, eos_id=EOS, pad_id=PAD)
  mask = np.asarray(out.mask)
  np.testing.assert_array_equal(exp.response_tokens, out.tokens)
  np.testing.assert_array_equal(exp.response_mask, mask)
  # The full forward recomputes what the KV-cache sampler reported while sampling.
  np.testing.assert_allclose(np.where(mask, exp.logprobs, 0), out.logprobs, **TOL)
  kl_sum = np.sum(np.where(mask, exp.logprobs - exp.ref_logprobs, 0), axis=1)
  np.testing.assert_allclose(np.sum(np.where(mask, exp.rewards, 0), axis=1),
                             exp.scores - 0.3 * kl_sum, **TOL)
  np.testing.assert_allclose(metrics['objective/kl'], kl_sum.mean(), **TOL)
  np.testing.assert_allclose(metrics['objective/scores'], np.mean(exp.scores), **TOL)
  tokens, seq_mask = exp.sequences()
  full = scalar_forward(st.value.params, tokens, seq_mask)
  np.testing.assert_allclose(exp.values, np.where(mask, full[:, P - 1:-1], 0), **TOL)
  np.testing.assert_allclose(rl_math.masked_mean(exp.advantages, mask), 0, atol=1e-5)
  assert np.all(np.asarray(exp.advantages)[~mask] == 0)


@pytest.mark.slow
def test_rollout_chunks_score_like_the_whole_batch(setup):
  settings, st, frozen, batch, _, exp, metrics = setup
  sample = sampling.SampleOutput(tokens=exp.response_tokens, logprobs=exp.logprobs,
                                 mask=exp.response_mask)
  chunked = dataclasses.replace(settings, rollout_chunks=2)
  got, got_metrics = jax.jit(functools.partial(experience.score, settings=chunked))(
      st, frozen, batch, sample)
  for name, want in vars(exp).items():
    np.testing.assert_allclose(getattr(got, name), want, **TOL, err_msg=name)
  for name, want in metrics.items():
    np.testing.assert_allclose(got_metrics[name], want, **TOL, err_msg=name)


@pytest.mark.slow
def test_rollout_chunks_sample_strided_rows_with_their_own_keys(setup):
  settings, st, _, batch, rng, _, _ = setup
  chunked = dataclasses.replace(settings, rollout_chunks=2)
  got = jax.jit(functools.partial(experience.generate, settings=chunked))(st, batch, rng)
  for chunk in range(2):
    rows = slice(chunk, None, 2)  # chunk c holds rows c, c + 2, ...
    want = sampling.sample(st.policy.params, CFG, batch['tokens'][rows], batch['mask'][rows],
                           jax.random.fold_in(rng, chunk), max_new_tokens=N, eos_id=EOS,
                           pad_id=PAD)
    np.testing.assert_array_equal(got.tokens[rows], want.tokens)
    np.testing.assert_array_equal(got.mask[rows], want.mask)
    np.testing.assert_allclose(got.logprobs[rows], want.logprobs, **TOL)


@pytest.mark.slow
def test_scores_use_bias_and_no_eos_penalty(setup):
  settings, _, frozen, batch, *_ = setup
  response = np.full((B, N), 5, np.int32)
  r_mask = np.ones((B, N), bool)
  response[0, 2], response[0, 3:] = EOS, PAD  # row 0 ends; the others never do
  r_mask[0, 3:] = False
  tokens = jnp.concatenate([batch['tokens'], response], axis=1)
  mask = jnp.concatenate([batch['mask'], r_mask], axis=1)
  scores = experience.score_responses(frozen, tokens, mask, jnp.asarray(response),
                                          jnp.asarray(r_mask), settings)
  raw = last_token_value(scalar_forward(frozen.reward_params, tokens, mask), mask)
  np.testing.assert_allclose(scores[0], raw[0] - 0.25, **TOL)
  np.testing.assert_array_equal(scores[1:], settings.no_eos_penalty)


def _reference_ppo_loss(params, mb, settings):
  """The clipped surrogate written out directly (no shared helper with the library)."""
  tokens = jnp.concatenate([mb.prompt_tokens, mb.response_tokens], axis=1)
  mask = jnp.concatenate([mb.prompt_mask, mb.response_mask], axis=1)
  logits = LanguageModel(CFG).apply({'params': params}, tokens, mask)[:, P - 1:-1]
  logp = jax.nn.log_softmax(logits / settings.temperature)
  logp = jnp.take_along_axis(logp, mb.response_tokens[..., None], axis=-1)[..., 0]
  ratio = jnp.exp(logp - mb.logprobs)
  per_token = jnp.maximum(-mb.advantages * ratio,
                          -mb.advantages * jnp.clip(ratio, 1 - settings.clip, 1 + settings.clip))
  return jnp.sum(per_token * mb.response_mask) / jnp.sum(mb.response_mask)


def _reference_nll(params, batch):
  logits = LanguageModel(CFG).apply({'params': params}, batch['tokens'], batch['mask'])
  logp = jax.nn.log_softmax(logits[:, :-1])
  logp = jnp.take_along_axis(logp, batch['tokens'][:, 1:, None], axis=-1)[..., 0]
  w = batch['loss_mask'][:, 1:]
  return -jnp.sum(logp * w) / jnp.sum(w)


@pytest.mark.parametrize('ptx_chunks', [1, 3])  # 3: the 3 rows one at a time
@pytest.mark.slow
def test_ptx_gradient_is_accumulated(setup, ptx_chunks):
  _, st, _, _, _, exp, _ = setup
  settings = make_settings(ptx_coef=2.5, ptx_chunks=ptx_chunks)
  mb = jax.tree.map(lambda x: x[:M], exp)
  # Push the policy off the rollout policy so that some ratios clip.
  params = jax.tree.map(lambda x: x * 1.5, st.policy.params)
  ptx = ptx_batch((), 3)
  grads, metrics = jax.jit(functools.partial(ppo.policy_gradients, settings=settings))(
      params, mb, ptx)
  assert metrics['ppo/policy/clipfrac'] > 0

  @jax.jit
  def reference(p):
    nll, nll_grads = jax.value_and_grad(_reference_nll)(p, ptx)
    ppo_grads = jax.grad(_reference_ppo_loss)(p, mb, settings)
    return jax.tree.map(lambda g, h: g + 2.5 * h, ppo_grads, nll_grads), nll

  want, nll = reference(params)
  # Gradients are sums over every token of both batches, grouped differently by the two
  # programs; float32 rounding of those sums leaves ~1e-5 relative noise on small entries.
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics['ptx/loss'], nll, **TOL)


@pytest.fixture(scope='module')
def stepped(setup):
  """One ppo_step with ptx, two epochs and the adaptive controller, shared by two tests.

  Plain SGD: Adam would rescale the rounding noise of gradients that are exactly 0 in exact
  arithmetic (attention key biases: softmax ignores a per-query shift) up to +-lr, so sharded
  and unsharded runs could not be compared.
  """
  _, st, _, _, _, exp, _ = setup
  settings = make_settings(ptx_coef=1.0, kl_target=1.0, kl_horizon=40.0, ema_decay=0.9,
                           ppo_epochs=2, policy_tx=optax.sgd(0.1), value_tx=optax.sgd(0.1))
  ptx = ptx_batch((settings.updates_per_iteration,), 2)
  step = functools.partial(ppo.ppo_step, settings=settings)
  rng = jax.random.key(3)
  new, metrics = jax.jit(step)(st, exp, ptx, rng)
  return step, ptx, rng, new, metrics


@pytest.mark.slow
def test_ppo_step_ema_kl_and_counters(setup, stepped):
  _, st, _, _, _, exp, _ = setup
  _, _, _, new, metrics = stepped
  updates = 4  # 2 minibatches x 2 epochs
  assert int(new.step) == 1
  assert int(new.policy.step) == updates and int(new.value.step) == updates
  for ema, old, p in zip(*(jax.tree.leaves(t) for t in (new.ema_params, st.ema_params,
                                                        new.policy.params))):
    np.testing.assert_allclose(ema, 0.9 * old + 0.1 * p, **TOL)
  kl = np.mean(np.sum(np.where(exp.response_mask, exp.logprobs - exp.ref_logprobs, 0), axis=1))
  want = 0.3 * (1 + np.clip(kl / 1.0 - 1, -0.2, 0.2) * B / 40.0)
  np.testing.assert_allclose(new.kl_coef, want, **TOL)
  assert not np.allclose(jax.tree.leaves(new.value.params)[0], jax.tree.leaves(st.value.params)[0])
  for name in ('ppo/policy/clipfrac', 'ppo/policy/approxkl', 'ppo/policy/entropy', 'ppo/val/vpred',
               'ppo/val/var_explained', 'ppo/val/clipfrac', 'ptx/loss', 'ppo/policy/lr'):
    assert np.isfinite(metrics[name]), name


@pytest.mark.parametrize('geometry', ['tiny', '1.3b'])
def test_warmup_counts_iterations(geometry):
  config = config_lib.load_config(f'configs/ppo.py:{geometry}')
  settings = ppo_stage.settings_from_config(config, eos_id=EOS, pad_id=PAD)
  u = settings.updates_per_iteration
  assert u == config.batch_size // config.minibatch_size * config.ppo_epochs
  lr, w = config.optimizer.lr, config.optimizer.warmup_steps  # warmup in iterations
  np.testing.assert_allclose(settings.policy_lr(0), 0.1 * lr, rtol=1e-6)
  # Linear from 0.1x to 1x over w iterations of u optimizer updates each.
  half = w * u // 2
  np.testing.assert_allclose(settings.policy_lr(half), (0.1 + 0.9 * half / (w * u)) * lr, rtol=1e-5)
  np.testing.assert_allclose(settings.policy_lr(w * u), lr, rtol=1e-6)
  np.testing.assert_allclose(settings.value_lr(w * u + 7), config.value_optimizer.lr, rtol=1e-6)


def test_settings_need_every_ppo_field():
  config = config_lib.load_config('configs/ppo.py')
  del config['clip']
  with pytest.raises(config_lib.ConfigError,
                     match='^ppo: the config has no clip; PPO reads every field that '
                           'configs/ppo.py sets$'):
    ppo_stage.settings_from_config(config, eos_id=EOS, pad_id=PAD)


@pytest.mark.slow
def test_toy_reward_increases():
  target = 9

  def emit_target(tokens, mask):  # fraction of response tokens equal to `target`
    response = tokens[:, -N:]
    return jnp.mean((response == target).astype(jnp.float32), axis=1)

  settings = make_settings(batch_size=16, minibatch_size=8, ppo_epochs=2, eos_id=None,
                           score_fn=emit_target, policy_tx=optax.adam(1e-2),
                           value_tx=optax.adam(1e-2))
  st = ppo.init_ppo_state(init('lm', 0), init('scalar', 1), 0.01, settings)
  frozen = ppo.Frozen(reference_params=init('lm', 0), reward_params=init('scalar', 1),
                      reward_bias=jnp.zeros((), jnp.float32))
  rollout = jax.jit(functools.partial(ppo.make_experience, settings=settings))
  train = jax.jit(functools.partial(ppo.ppo_step, settings=settings))
  scores = []
  for i in range(10):  # compiling dominates; iterations are cheap
    rng = jax.random.fold_in(jax.random.key(0), i)
    exp, metrics = rollout(st, frozen, prompts(16, seed=i), rng)
    scores.append(float(metrics['objective/scores']))
    st, _ = train(st, exp, None, rng)
  # From ~1/64 (a uniform policy) to several times that.
  assert np.mean(scores[-2:]) > np.mean(scores[:2]) + 0.15, scores


def _assert_same_step(got_state, got_metrics, want_state, want_metrics):
  for got, want in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    np.testing.assert_allclose(got, want, **TOL)
  for name in want_metrics:
    np.testing.assert_allclose(got_metrics[name], want_metrics[name], **TOL, err_msg=name)


@pytest.mark.slow
def test_sharded_ppo_step_equals_unsharded(setup, stepped):
  _, st, _, _, _, exp, _ = setup
  step, ptx, rng, want_state, want_metrics = stepped
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  def put(tree, head):  # params in their logical (fsdp x tensor) layout
    abstract = jax.eval_shape(functools.partial(state.init_params, CFG, head), jax.random.key(0))
    return jax.device_put(tree, nn.unbox(sharding.logical_shardings(abstract, mesh)))

  sharded = st.replace(policy=st.policy.replace(params=put(st.policy.params, 'lm')),
                       value=st.value.replace(params=put(st.value.params, 'scalar')),
                       ema_params=put(st.ema_params, 'lm'))
  data = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  with jax.set_mesh(mesh):
    got_state, got_metrics = jax.jit(step)(sharded, jax.tree.map(data, exp), ptx, rng)
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(got_state.policy.params))
  # Reductions (matmuls over fsdp-split dims, batch means) are summed in a different order on
  # 8 devices, so float32 results agree to rounding, not bit for bit.
  _assert_same_step(got_state, got_metrics, want_state, want_metrics)


@pytest.mark.slow
def test_unrolled_update_equals_layer_loop(setup, stepped):
  """Unrolling the layers in the update changes how the passes are compiled, not the result."""
  _, st, _, _, _, exp, _ = setup
  step, ptx, rng, want_state, want_metrics = stepped
  unrolled = dataclasses.replace(step.keywords['settings'], unroll_update_layers=True)
  assert ppo.update_settings(unrolled).policy_model.scan_unroll == CFG.n_layers
  got_state, got_metrics = jax.jit(functools.partial(ppo.ppo_step, settings=unrolled))(
      st, exp, ptx, rng)
  _assert_same_step(got_state, got_metrics, want_state, want_metrics)
