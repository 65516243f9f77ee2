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
import dataclasses
import functools
import itertools
import json
import pathlib
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from rlhf_jax import checkpoint, config_lib, experience, loop, metrics, optim, ppo, sharding
from rlhf_jax.data import pipeline
from rlhf_jax.stages import common, selection, validation
from rlhf_jax.stages import eval as eval_stage

PTX_FIELDS = ('tokens', 'mask', 'loss_mask')  # what ptx_loss reads of a TokenBatch
# The PPOSettings fields built here (geometries, optimizers, tokenizer ids); every other field is
# the config field of the same name.
BUILT_FIELDS = ('policy_model', 'reward_model', 'policy_tx', 'value_tx', 'policy_lr', 'value_lr',
                'response_len', 'eos_id', 'pad_id', 'score_fn')


def settings_from_config(config: ml_collections.ConfigDict, *, eos_id: Optional[int], pad_id: int,
                         score_fn: Optional[experience.ScoreFn] = None) -> ppo.PPOSettings:
  """PPOSettings of a `configs/ppo.py`-style config, with both optimizers built.

  The configs give the warmup in PPO iterations (paper: "warmup over the first 10 iterations"),
  but the optimizers step once per minibatch, so the warmup is stretched to
  `warmup_steps * updates_per_iteration` optimizer steps.

  Args:
    config: the stage config (fields as in configs/ppo.py).
    eos_id, pad_id: the tokenizer's ids (eos_id None: fixed-length responses, no EOS penalty).
    score_fn: optional replacement of the reward model.

  Raises:
    ConfigError: when the config lacks a field PPOSettings takes, or does not validate
      (`config_lib.validate`: e.g. the batch does not split into whole minibatches or chunks).
  """
  named = [f.name for f in dataclasses.fields(ppo.PPOSettings) if f.name not in BUILT_FIELDS]
  missing = [name for name in named if name not in config]
  if missing:
    raise config_lib.ConfigError(f'{config.stage}: the config has no {", ".join(missing)}; '
                                 'PPO reads every field that configs/ppo.py sets')
  config_lib.validate(config)
  updates = config.ppo_epochs * (config.batch_size // config.minibatch_size)
  total = max(config.episodes // config.batch_size, 1) * updates

  def optimizer(opt):
    opt = ml_collections.ConfigDict(opt.to_dict())
    opt.warmup_steps = int(opt.warmup_steps) * updates
    return optim.make_optimizer(opt, total), optim.schedule(opt, total)

  policy_tx, policy_lr = optimizer(config.optimizer)
  value_tx, value_lr = optimizer(config.value_optimizer)
  return ppo.PPOSettings(
      policy_model=config_lib.to_model_config(config.model),
      reward_model=config_lib.to_model_config(config.reward_model),
      policy_tx=policy_tx, value_tx=value_tx, policy_lr=policy_lr, value_lr=value_lr,
      response_len=config.data.response_len, eos_id=eos_id, pad_id=pad_id, score_fn=score_fn,
      **{name: config[name] for name in named})


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
  score = jax.jit(sharding.traced_in_mesh(functools.partial(experience.score, settings=settings),
                                          mesh),
                  in_shardings=(state_shardings, frozen_shardings, rows, rows),
                  out_shardings=(rows, None))
  train = loop.jit_step(functools.partial(ppo.ppo_step, settings=settings),
                        state_shardings=state_shardings, extra_shardings=(rows,),
                        batch_shardings=ptx if settings.ptx_coef else None)
  return generate, score, train, (rows, ptx) if settings.ptx_coef else rows


def _iteration(jitted, frozen: ppo.Frozen, with_ptx: bool,
               log_rollouts: Callable[[int, experience.Experience], None]) -> loop.StepFn:
  """One PPO iteration as a loop step: `(state, batch, rng) -> (state, metrics)`; after it,
  `log_rollouts(iteration, experience)` (the rollout table).

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
    log_rollouts(int(state.step), exp)
    return state, {**rollout_metrics, **train_metrics, 'time/generate': t_generate,
                   'time/score': t_score, 'time/train': t_train}
  return iteration


ROLLOUT_TABLE_ROWS = 8  # episodes per logged table: a screenful to read, quick to decode


def _first_episodes(exp: experience.Experience, n: int) -> tuple[jax.Array, ...]:
  """Prompt tokens and mask [n, P], response tokens and mask [n, N], score [n] and the KL to the
  reference summed over the response [n] (objective/kl's per-episode term) of episodes 0..n-1."""
  kl = jnp.sum(jnp.where(exp.response_mask, exp.logprobs - exp.ref_logprobs, 0), axis=-1)
  return tuple(x[:n] for x in (exp.prompt_tokens, exp.prompt_mask, exp.response_tokens,
                               exp.response_mask, exp.scores, kl))


def rollout_logger(table: metrics.RolloutTable, tok, mesh
                   ) -> Callable[[int, experience.Experience], None]:
  """`(iteration, experience) -> None`: on the iterations the table is due, its first
  ROLLOUT_TABLE_ROWS episodes decoded into the table (gathered from every process)."""
  first = jax.jit(functools.partial(_first_episodes, n=ROLLOUT_TABLE_ROWS),
                  out_shardings=sharding.replicated(mesh))

  def log(iteration: int, exp: experience.Experience) -> None:
    if not table.due(iteration):
      return
    prompts, prompt_mask, responses, response_mask, scores, kl = map(np.asarray, first(exp))
    table.write(iteration, [
        {'prompt': tok.decode(p[pm].tolist()), 'response': tok.decode(r[rm].tolist()),
         'score': float(sc), 'kl': float(k)}
        for p, pm, r, rm, sc, k in zip(prompts, prompt_mask, responses, response_mask, scores, kl)])
  return log


VALID_TEXT_BATCHES = 4  # batches of validation text for the pretraining-distribution loss
CURVE_FILE = 'validation.jsonl'  # one line per validation: the selection curve
BEST_OF_N_FILE = 'best_of_n.json'


def _best_of_n(config, rollout, vset, sft_params, baseline, key, stage_dir) -> dict:
  """The best-of-n check, {'rm': picks by the RM, 'gold': picks by the gold score} (computed
  once; a resumed run reads it back)."""
  path = stage_dir / BEST_OF_N_FILE
  if path.exists():
    return json.loads(path.read_text())
  samples = [rollout(sft_params, vset, jax.random.fold_in(key, 1 + j))
             for j in range(config.best_of_n)]
  result = {pick_by: validation.best_of_n(samples, vset, baseline, pick_by)
            for pick_by in ('rm', 'gold')}
  if jax.process_index() == 0:
    checkpoint.write_json(str(path), result)
  for pick_by, label in (('rm', 'the RM'), ('gold', 'the gold score')):
    print(f'[{config.stage}] best-of-n of SFT by {label} against SFT on {len(vset.prompts)} '
          'validation prompts (training labelers): ' + ', '.join(
              f'n={n} win {r["win_rate_vs_sft"]:.3f} Likert {r["likert"]:.2f}'
              for n, r in result[pick_by].items()), flush=True)
  return result


def _validation(config, tok, settings: ppo.PPOSettings, frozen: ppo.Frozen, policy_params,
                mesh, stage_dir: pathlib.Path):
  """(eval_fn for the loop, BestParams, best-of-n result) of a run with validation.

  Every `eval_every` iterations (and at iteration 0, sft_init itself) the EMA policy answers the
  validation prompts with one fixed key and is judged against SFT's answers; the iteration with
  the best `select_by` is kept (its EMA and raw policy parameters) in <stage_dir>/selected.
  """
  stage_dir.mkdir(parents=True, exist_ok=True)
  vset = validation.validation_set(config, tok)
  rollout = validation.Rollout(config, tok, settings.policy_model, settings.reward_model, frozen,
                               mesh)
  key = jax.random.key(config.seed)
  sft_params = common.load_init_params(config.baseline_from, config.workdir,
                                       settings.policy_model, 'lm', mesh)
  baseline = rollout(sft_params, vset, key).texts
  best_of_n = (_best_of_n(config, rollout, vset, sft_params, baseline, key, stage_dir)
               if config.best_of_n else {})
  del sft_params
  paths = common.data_paths(config)
  text = list(itertools.islice(pipeline.make_dataset(
      'text', paths['valid_text'], tok, batch_size=config.batch_size,
      seq_len=config.data.seq_len, shuffle=False, num_epochs=1, shard_index=0, shard_count=1,
      pack=True), VALID_TEXT_BATCHES))
  rows = sharding.batch_sharding(mesh)
  best = selection.BestParams(str(stage_dir), config.select_by, 'max',
                              checkpoint.fingerprint(config_lib.model_roles(config)))

  def evaluate(step: int, ema_params, policy_params) -> dict:
    out = validation.judge(vset, rollout(ema_params, vset, key), baseline)
    out['valid/pretrain_loss'] = eval_stage.pretrain_loss(ema_params, settings.policy_model,
                                                          text, rows)
    best.update(step, out[config.select_by],
                {'ema_params': ema_params, 'policy': {'params': policy_params}})
    if jax.process_index() == 0:
      with open(stage_dir / CURVE_FILE, 'a') as f:
        f.write(json.dumps({'iteration': step, **out}) + '\n')
    print(f'[{config.stage}] validation at iteration {step}: ' + '  '.join(
        f'{k.split("/", 1)[1]} {v:.3f}' for k, v in out.items()), flush=True)
    return out

  if best.best is None:  # a fresh run: iteration 0 (sft_init) is a candidate too
    evaluate(0, policy_params, policy_params)
  return (lambda s: evaluate(int(s.step), s.ema_params, s.policy.params)), best, best_of_n


def selection_curve(stage_dir: pathlib.Path) -> list[dict]:
  """The validation points of a run, one per iteration (a resumed run's repeat replaces it)."""
  path = stage_dir / CURVE_FILE
  if not path.exists():
    return []
  points = {}
  for line in path.read_text().splitlines():
    point = json.loads(line)
    points[point['iteration']] = point
  return [points[k] for k in sorted(points)]


def _tokens_per_iteration(config: ml_collections.ConfigDict, settings: ppo.PPOSettings) -> int:
  """Episode positions (prompt + response, padding included) plus pretraining tokens."""
  episodes = config.batch_size * (config.data.prompt_len + config.data.response_len)
  ptx = settings.updates_per_iteration * ptx_rows(config) * config.data.seq_len
  return episodes + (ptx if settings.ptx_coef else 0)


def run_ppo(config: ml_collections.ConfigDict, stage_dir: pathlib.Path) -> dict:
  """Trains the policy of `config` with PPO (ptx_coef 0) or PPO-ptx; returns the stage summary."""
  mesh = common.mesh(config)
  tok = common.tokenizer(config, config_lib.to_model_config(config.model))
  settings = settings_from_config(config, eos_id=tok.eos_id, pad_id=tok.pad_id)
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

  eval_fn, best, best_of_n = (
      _validation(config, tok, settings, frozen, policy_params, mesh, stage_dir)
      if config.get('valid_prompts') else (None, None, {}))
  total_steps = config.total_steps or max(1, config.episodes // config.batch_size)
  print(f'[{config.stage}] {total_steps} iterations of {config.batch_size} episodes '
        f'({settings.updates_per_iteration} updates of {config.minibatch_size}'
        + (f', {ptx_rows(config)} pretraining rows each, gamma {config.ptx_coef}'
           if settings.ptx_coef else '') + f') on mesh {dict(mesh.shape)}', flush=True)
  tokens = _tokens_per_iteration(config, settings)
  table = metrics.RolloutTable(str(stage_dir), config.rollout_table_every)
  try:
    result = loop.run(
        _iteration(jitted, frozen, bool(settings.ptx_coef), rollout_logger(table, tok, mesh)),
        init_state=init_state, abstract_state=abstract_state,
        data=_datasets(config, tok, settings), stage_dir=str(stage_dir),
        base_rng=jax.random.key(config.seed),
        schedule=loop.Schedule.from_config(config, total_steps),
        fingerprint=checkpoint.fingerprint(config_lib.model_roles(config)),
        batch_shardings=batch_shardings, loss_key='ppo/policy/loss',
        tokens_fn=lambda batch: tokens, eval_fn=eval_fn)
  finally:
    table.close()
  common.exit_if_stopped(result)
  final = {k: v for k, v in result.metrics.items() if k.startswith(('objective/', 'ptx/'))}
  summary = {'iterations': result.step, 'episodes': result.step * config.batch_size,
             'checkpoint_step': result.step, **final}
  if best is None:
    return summary
  if not config.eval_every or result.step % config.eval_every:
    eval_fn(result.state)  # the final iteration competes too
  best.close()
  curve = selection_curve(stage_dir)
  print(f'[{config.stage}] selected iteration {best.best["step"]} of {result.step} by '
        f'{config.select_by} {best.best["value"]:.3f} (validation prompts, training labelers)',
        flush=True)
  return {**summary, **best.summary(), 'selection_curve': curve, 'best_of_n': best_of_n}
