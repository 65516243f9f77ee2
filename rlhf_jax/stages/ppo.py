"""PPO and PPO-ptx stages (InstructGPT section 3.5, App. C.4): RL fine-tuning through the host loop.

Reads <workdir>/sft_init (the policy's initialisation, and the KL reference: the same weights,
kept as a separate frozen copy), <workdir>/rm (the reward model with its normalisation bias, and
the value model's initialisation, paper C.4), the world's PPO prompts and, for PPO-ptx, its
pretraining text. One loop step is one PPO iteration in three separately jitted and timed
phases: generate (sampling), score (reference, RM and value forwards, rewards, GAE) and train
(`ppo_step`), logged as `time/generate`, `time/score`, `time/train` in perf.jsonl.

The checkpoint holds the whole PPOState (policy and value with both optimizers, `ema_params`,
the KL coefficient) and both data-iterator positions, and step n's rng is fold_in(seed, n), so
a killed run resumes exactly. Evaluation reads the policy EMA by its field name (stable):
`checkpoint.load_params(<stage_dir>, abstract, shardings, field='ema_params')`.
"""
import functools
import pathlib

import jax
import ml_collections
from jax.sharding import NamedSharding

from rlhf_jax import checkpoint, config_lib, experience, loop, ppo, sharding
from rlhf_jax.data import pipeline
from rlhf_jax.stages import common

PTX_FIELDS = ('tokens', 'mask', 'loss_mask')  # what ptx_loss reads of a TokenBatch


def _load_inputs(config: ml_collections.ConfigDict, settings: ppo.PPOSettings, mesh):
  """(sft_init params, RM params, RM bias), each read straight into its sharded layout."""
  policy = common.load_init_params(config.init_from, config.workdir, settings.policy_model, 'lm',
                                   mesh)
  reward = common.load_init_params(config.reward_from, config.workdir, settings.reward_model,
                                   'scalar', mesh)
  rm_dir = common.stage_path(config.workdir, config.reward_from)
  bias = checkpoint.read_summary(str(rm_dir)).get('reward_bias')
  if bias is None:
    raise checkpoint.CheckpointMismatch(f'{rm_dir}: summary.json has no reward_bias; rerun the '
                                        'rm stage')
  return policy, reward, float(bias)


def _datasets(config: ml_collections.ConfigDict, tok, settings: ppo.PPOSettings):
  """(prompts,) or (prompts, ptx): B left-padded prompts and [U, R, T] pretraining rows per step.

  Every process reads its own shard: B and R are split over processes here and over devices by
  the batch shardings.
  """
  paths = common.data_paths(config)
  prompts = pipeline.make_dataset('prompts', paths['prompts_ppo'], tok,
                                  batch_size=common.per_process(config.batch_size),
                                  seq_len=config.data.seq_len, prompt_len=config.data.prompt_len,
                                  seed=config.seed)
  if not settings.ptx_coef:
    return (prompts,)
  updates, rows = settings.updates_per_iteration, common.per_process(ptx_rows(config))
  text = pipeline.make_dataset('text', paths['pretrain'], tok, batch_size=updates * rows,
                               seq_len=config.data.seq_len, seed=config.seed, pack=True)
  ptx = text.map(lambda b: {k: b[k].reshape(updates, rows, -1) for k in PTX_FIELDS})
  return prompts, ptx


def ptx_rows(config: ml_collections.ConfigDict) -> int:
  """R, pretraining rows per optimizer update (paper: 8 per episode of the minibatch)."""
  return config.ptx_per_episode * config.minibatch_size


def phases(settings: ppo.PPOSettings, state_shardings, frozen_shardings, mesh):
  """The three jitted phases of an iteration: generate, score, train (donates the state), and
  the batch shardings: rows of the prompts, plus [U, R, T] pretraining rows with ptx.

  The aot fit check and the benchmarks compile exactly these.
  """
  rows = sharding.batch_sharding(mesh, 1)  # episode axis first, every field
  ptx = NamedSharding(mesh, sharding.logical_spec((None, 'act_batch')))  # [U, R, T] over R
  generate = loop.jit_step(functools.partial(experience.generate, settings=settings),
                           state_shardings=state_shardings, batch_shardings=rows,
                           donate_state=False, out_shardings=rows)
  score = jax.jit(functools.partial(experience.score, settings=settings),
                  in_shardings=(state_shardings, frozen_shardings, rows, rows),
                  out_shardings=(rows, None))
  train = loop.jit_step(functools.partial(ppo.ppo_step, settings=settings),
                        state_shardings=state_shardings, extra_shardings=(rows,),
                        batch_shardings=ptx if settings.ptx_coef else None)
  return generate, score, train, (rows, ptx) if settings.ptx_coef else rows


def _iteration(jitted, frozen: ppo.Frozen, with_ptx: bool) -> loop.StepFn:
  """One PPO iteration as a loop step: `(state, batch, rng) -> (state, metrics)`.

  Each phase is waited for before the next starts, so `time/*` measure them apart; the phases
  depend on each other's outputs anyway, so this costs only the host's dispatch overlap.
  """
  generate, score, train = jitted

  def iteration(state, batch, rng):
    prompts, ptx = batch if with_ptx else (batch, None)
    sample_rng, train_rng = jax.random.split(rng)
    sample, t_generate = loop.timed(generate, state, prompts, sample_rng)
    (exp, rollout_metrics), t_score = loop.timed(score, state, frozen, prompts, sample)
    (state, train_metrics), t_train = loop.timed(train, state, exp, ptx, train_rng)
    return state, {**rollout_metrics, **train_metrics, 'time/generate': t_generate,
                   'time/score': t_score, 'time/train': t_train}
  return iteration


def _tokens_per_iteration(config: ml_collections.ConfigDict, settings: ppo.PPOSettings) -> int:
  """Episode positions (prompt + response, padding included) plus pretraining tokens."""
  episodes = config.batch_size * (config.data.prompt_len + config.data.response_len)
  ptx = settings.updates_per_iteration * ptx_rows(config) * config.data.seq_len
  return episodes + (ptx if settings.ptx_coef else 0)


def run_ppo(config: ml_collections.ConfigDict, stage_dir: pathlib.Path) -> dict:
  """Trains the policy of `config` with PPO (ptx_coef 0) or PPO-ptx; returns the stage summary."""
  mesh = common.mesh(config)
  if ptx_rows(config) % sharding.batch_size_multiple(mesh):
    raise config_lib.ConfigError(
        f'ptx_per_episode * minibatch_size = {ptx_rows(config)} pretraining rows per update is '
        f'not divisible by the mesh batch axes ({sharding.batch_size_multiple(mesh)})')
  tok = common.tokenizer(config, config_lib.to_model_config(config.model))
  settings = ppo.settings_from_config(config, eos_id=tok.eos_id, pad_id=tok.pad_id)
  abstract_state, state_shardings = ppo.abstract_ppo_state(settings, mesh)
  policy_params, reward_params, bias = _load_inputs(config, settings, mesh)
  # The reference is the loaded sft_init buffer itself; the state gets fresh copies (jit never
  # aliases undonated inputs), so donating the state can never invalidate the frozen models.
  frozen = ppo.Frozen(reference_params=policy_params, reward_params=reward_params,
                      reward_bias=jax.device_put(bias, sharding.replicated(mesh)))
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  *jitted, batch_shardings = phases(settings, state_shardings, frozen_shardings, mesh)

  def init_state():
    init = functools.partial(ppo.init_ppo_state, kl_coef=config.kl_coef, settings=settings)
    return jax.jit(init, out_shardings=state_shardings)(policy_params, reward_params)

  total_steps = config.total_steps or max(1, config.episodes // config.batch_size)
  print(f'[{config.stage}] {total_steps} iterations of {config.batch_size} episodes '
        f'({settings.updates_per_iteration} updates of {config.minibatch_size}'
        + (f', {ptx_rows(config)} pretraining rows each, gamma {config.ptx_coef}'
           if settings.ptx_coef else '') + f') on mesh {dict(mesh.shape)}', flush=True)
  tokens = _tokens_per_iteration(config, settings)
  result = loop.run(
      _iteration(jitted, frozen, bool(settings.ptx_coef)), init_state=init_state,
      abstract_state=abstract_state, data=_datasets(config, tok, settings),
      stage_dir=str(stage_dir), base_rng=jax.random.key(config.seed),
      schedule=loop.Schedule.from_config(config, total_steps),
      fingerprint=checkpoint.fingerprint(config_lib.model_roles(config)),
      batch_shardings=batch_shardings, loss_key='ppo/policy/loss',
      tokens_fn=lambda batch: tokens)
  common.exit_if_stopped(result)
  final = {k: v for k, v in result.metrics.items() if k.startswith(('objective/', 'ptx/'))}
  return {'iterations': result.step, 'episodes': result.step * config.batch_size,
          'checkpoint_step': result.step, **final}
