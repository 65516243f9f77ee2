"""Language-model stages: pretrain (world corpus), sft (C.1) and sft_init (C.3, with 10% pretraining
rows in every batch), and the reward model's own pretrain_rm and sft_rm (the same at the RM
geometry). All run `sft_step` through the host loop."""
import functools
import itertools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from rlhf_jax import checkpoint, config_lib, loop, rm, sampling, sft, sharding, state
from rlhf_jax.data import pipeline, records
from rlhf_jax.stages import common, layout, program, selection

EVAL_BATCHES = 8  # validation batches per evaluation: a fixed, small, exact subset
EVAL_PROMPTS = 64  # validation prompts sampled for the RM-score selection


def _datasets(config, tok, kind: str, path, mix_path=None):
  """This process's training rows: `kind` rows, plus a `ptx_fraction` share of text rows."""
  rows = common.per_process(config.batch_size)
  ptx_rows = round(rows * config.get('ptx_fraction', 0.0)) if mix_path else 0
  common_kw = dict(seq_len=config.data.seq_len, prompt_len=config.data.prompt_len,
                   seed=config.seed, loss_on_prompt=config.get('loss_on_prompt', False))
  main = pipeline.make_dataset(kind, path, tok, batch_size=rows - ptx_rows,
                               pack=config.get('pack', False), **common_kw)
  if not ptx_rows:
    return main
  text = pipeline.make_dataset('text', mix_path, tok, batch_size=ptx_rows, pack=True, **common_kw)
  return pipeline.ConcatBatches([main, text])


def _valid_loss_fn(config, tok, kind: str, path, model, mesh, prefix: str):
  """Exact validation NLL per token over the first EVAL_BATCHES batches of the validation set."""
  # Every record up to EVAL_BATCHES batches, the last one padded: a validation set smaller
  # than a batch still counts.
  batches = [b for b, _ in itertools.islice(
      common.padded_batches(kind, path, tok, config, config.batch_size), EVAL_BATCHES)]
  rows = sharding.batch_sharding(mesh)
  step = jax.jit(functools.partial(sft.sft_eval_step, model=model))

  def evaluate(params):
    total = common.sum_metrics(step, params, batches, rows)
    return {f'{prefix}/valid_loss': total['sft/loss_sum'] / max(total['sft/tokens'], 1.0)}
  return evaluate


def _rm_score_fn(config, tok, model_cfg, mesh, paths):
  """Mean bias-corrected RM score of responses sampled (T = 1, fixed key, so checkpoints are
  compared on paired samples) for the validation prompts; None when no reward model exists."""
  if layout.summary(config.workdir, 'rm') is None:
    return None
  rm_summary = layout.summary(config.workdir, 'rm')
  rm_cfg = config_lib.to_model_config(ml_collections.ConfigDict(rm_summary['model']))
  rm_params = common.load_init_params('rm', config.workdir, rm_cfg, 'scalar', mesh)
  bias = rm_summary['reward_bias']
  prompts = next(iter(pipeline.make_dataset(
      'prompts', paths['prompts_sft_valid'], tok, batch_size=EVAL_PROMPTS,
      seq_len=config.data.seq_len, prompt_len=config.data.prompt_len, seed=0, shuffle=False,
      shard_index=0, shard_count=1)))
  response_len = config.data.seq_len - config.data.prompt_len

  @jax.jit
  def score(params, tokens, mask):
    out = sampling.sample(params, model_cfg, tokens, mask, jax.random.key(0),
                          max_new_tokens=response_len, eos_id=tok.eos_id, pad_id=tok.pad_id)
    seq = jnp.concatenate([tokens, out.tokens], axis=1)
    seq_mask = jnp.concatenate([mask, out.mask], axis=1)
    return jnp.mean(rm.reward_scores(rm_params, seq, seq_mask, model=state.make_model(
        rm_cfg, 'scalar'), bias=bias))

  return lambda params: {f'{config.stage}/valid_rm_score': float(
      score(params, prompts['tokens'], prompts['mask']))}


def _evaluation(config, tok, kind, valid_path, model, model_cfg, mesh, paths, stage_dir):
  """(eval_fn for the loop, BestParams or None, final metrics fn) per `config.select_by`."""
  valid_loss = _valid_loss_fn(config, tok, kind, valid_path, model, mesh, config.stage)
  select_by = config.get('select_by', 'last')
  rm_score = _rm_score_fn(config, tok, model_cfg, mesh, paths) if select_by == 'rm_score' else None
  metrics = lambda params: {**valid_loss(params), **(rm_score(params) if rm_score else {})}
  if select_by == 'last':
    return (lambda s: metrics(s.params)), None, metrics
  key, mode = ((f'{config.stage}/valid_rm_score', 'max') if rm_score else
               (f'{config.stage}/valid_loss', 'min'))
  best = selection.BestParams(str(stage_dir), key, mode,
                              checkpoint.fingerprint(config_lib.model_roles(config)))

  def eval_fn(train_state):
    out = metrics(train_state.params)
    best.update(int(train_state.step), out[key], train_state.params)
    return out
  return eval_fn, best, metrics


def run_lm(config: ml_collections.ConfigDict, stage_dir: pathlib.Path) -> dict:
  """Trains the policy LM of `config` with sft_step; returns the stage summary."""
  paths = common.data_paths(config)
  inputs = {
      'pretrain': ('text', paths['pretrain'], paths['pretrain_valid'], None),
      'sft': ('demonstrations', paths['sft_train'], paths['sft_valid'], None),
      'sft_init': ('demonstrations', paths['sft_train'], paths['sft_valid'], paths['pretrain']),
  }
  kind, train_path, valid_path, mix_path = inputs[config.stage.removesuffix('_rm')]
  mesh = common.mesh(config)
  model_cfg = config_lib.to_model_config(config.model)
  tok = common.tokenizer(config, model_cfg)
  n_records = len(records.read_records(train_path, kind))
  total_steps = config.total_steps or max(1, config.epochs * n_records // config.batch_size)
  train = program.program(config, mesh, total_steps)
  model = state.make_model(model_cfg, 'lm')

  def init_state():
    if config.stage.startswith('pretrain'):
      return state.create_sharded_train_state(model_cfg, 'lm', train.tx, mesh,
                                              jax.random.key(config.seed))[0]
    params = common.load_init_params(config.init_from, config.workdir, model_cfg, 'lm', mesh, tok)
    return jax.jit(functools.partial(state.create_train_state, tx=train.tx),
                   out_shardings=train.state_shardings)(params)

  eval_fn, best, final_metrics = _evaluation(config, tok, kind, valid_path, model, model_cfg, mesh,
                                             paths, stage_dir)
  print(f'[{config.stage}] {n_records} {kind} records, {total_steps} steps of '
        f'{config.batch_size} x {config.data.seq_len} tokens on mesh {dict(mesh.shape)}',
        flush=True)
  result = loop.run(
      train.step, init_state=init_state, abstract_state=train.abstract_state,
      data=_datasets(config, tok, kind, train_path, mix_path),
      stage_dir=str(stage_dir), base_rng=jax.random.key(config.seed),
      schedule=loop.Schedule.from_config(config, total_steps),
      fingerprint=checkpoint.fingerprint(config_lib.model_roles(config)),
      batch_shardings=train.batch_shardings, loss_key='sft/loss',
      eval_fn=eval_fn, flops_per_token=common.train_flops_per_token(model_cfg, config.data.seq_len))
  common.exit_if_stopped(result)
  summary = {'steps': result.step, 'checkpoint_step': result.step, 'selected_by': 'last',
             'train_loss': result.metrics.get('sft/loss', float('nan'))}
  if best is None:
    return {**summary, **final_metrics(result.state.params)}
  eval_fn(result.state)  # the final parameters compete too
  best.close()
  return {**summary, **best.summary()}
