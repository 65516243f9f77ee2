"""The reward-model stage (paper section 3.5, App. C.2): rm_step over the label stage's rankings.

The scalar model starts from the SFT stage's final parameters (its trunk; the unembedding is
replaced by a fresh scalar head) and trains for one epoch of K-way rankings, one prompt with
its K completions per batch element. Every `eval_every` steps (and at the end) it is evaluated
on the validation rankings of training labelers and of held-out labelers.

Afterwards the RM-split demonstrations are scored and the mean of their raw scores is stored
in summary.json as 'reward_bias': every consumer (PPO rewards, SFT selection, evaluation)
subtracts it through `rm.reward_scores(..., bias=...)`, so demonstrations score 0 on average.
"""
import functools
import pathlib

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import checkpoint, config_lib, loop, rm, sharding, state
from rlhf_jax.data import pipeline, records
from rlhf_jax.stages import common, layout, program
from rlhf_jax.stages import label as label_stage

VALID_SETS = ('valid_train', 'valid_heldout')
# Reported once at the end, never used for a choice: the RM's accuracy on the test prompts'
# samples by each labeler pool (the and the paper's §4.1 figure).
TEST_SETS = ('test_train', 'test_heldout')
# One compilation per model and batch shape, whatever the bias (a traced argument).
_score = jax.jit(rm.reward_scores, static_argnames=('model',))


def _valid_fn(config, tok, model, mesh, label_files, names=VALID_SETS):
  """params -> {'rm/<set>_loss', 'rm/<set>_accuracy'} over every record of each named set."""
  rows = sharding.batch_sharding(mesh)
  step = jax.jit(functools.partial(rm.rm_eval_step, model=model))
  sets = {name: label_files[name] for name in names if label_files[name].exists()}

  def evaluate(params):
    out = {}
    for name, path in sets.items():
      batches = (batch for batch, _ in common.padded_batches(
          'rankings', path, tok, config, config.batch_size, config.k_max))
      total = common.sum_metrics(step, params, batches, rows)
      out[f'rm/{name}_loss'] = total['rm/loss_sum'] / max(total['rm/prompts'], 1.0)
      out[f'rm/{name}_accuracy'] = total['rm/correct'] / max(total['rm/pairs'], 1.0)
    return out
  return evaluate


def demonstration_scores(params, config, tok, model, mesh, path, bias: float = 0.0) -> np.ndarray:
  """[N] RM scores (minus `bias`) of prompt + demonstration + eos, as the pipeline builds them."""
  rows = sharding.batch_sharding(mesh)
  out = []
  # As many rows per batch as a training batch holds sequences (prompts x k_max).
  rows_per_batch = config.batch_size * config.k_max
  for batch, n in common.padded_batches('demonstrations', path, tok, config, rows_per_batch, 0):
    scores = _score(params, *(jax.device_put(batch[k], rows) for k in ('tokens', 'mask')),
                    model=model, bias=bias)
    out.append(np.asarray(multihost_utils.process_allgather(scores, tiled=True))[:n])
  return np.concatenate(out)


def check_k(config, label_files) -> None:
  """Before any compilation: every ranking must fit k_max completions; raises ConfigError."""
  for path in label_files.values():
    if path.exists():
      k = max(len(r['completions']) for r in records.read_records(path, 'rankings'))
      if k > config.k_max:
        raise config_lib.ConfigError(f'k_max={config.k_max} but {path} has a ranking of '
                                     f'K={k} completions')


def _init_state_fn(config, model_cfg, tx, mesh, state_shardings):
  """Builds the step-0 state: the SFT trunk under a fresh scalar head, created sharded."""
  def init_state():
    lm_params = common.load_init_params(config.init_from, config.workdir, model_cfg, 'lm', mesh)
    fresh, _ = sharding.create_sharded(
        functools.partial(state.init_params, model_cfg, 'scalar'), mesh,
        jax.random.key(config.seed))
    params = state.init_scalar_from_lm(lm_params, fresh)
    return jax.jit(functools.partial(state.create_train_state, tx=tx),
                   out_shardings=state_shardings)(params)
  return init_state


def _bias_summary(params, config, tok, model, mesh, demos_path) -> dict:
  """The normalisation bias from the RM-split demonstrations, and their mean before / after."""
  raw = demonstration_scores(params, config, tok, model, mesh, demos_path)
  bias = rm.normalisation_bias(raw)
  shifted = demonstration_scores(params, config, tok, model, mesh, demos_path, bias)
  print(f'[rm] reward bias {bias:.4f} from {raw.size} demonstrations: mean score '
        f'{raw.mean():.4f} -> {shifted.mean():.2e}', flush=True)
  return {'reward_bias': bias, 'demonstrations_scored': int(raw.size),
          'demo_score_mean_before': float(raw.mean()),
          'demo_score_mean_after': float(shifted.mean())}


def run_rm(config: ml_collections.ConfigDict, stage_dir: pathlib.Path) -> dict:
  """Trains the reward model on the label stage's rankings; returns the stage summary."""
  label_files = label_stage.paths(layout.stage_dir(config.workdir, 'label'))
  check_k(config, label_files)
  mesh = common.mesh(config)
  model_cfg = config_lib.to_model_config(config.model)
  tok = common.tokenizer(config, model_cfg)
  n_records = len(records.read_records(label_files['train'], 'rankings'))
  total_steps = config.total_steps or max(1, config.epochs * n_records // config.batch_size)
  train = program.program(config, mesh, total_steps)
  model = state.make_model(model_cfg, 'scalar')
  valid = _valid_fn(config, tok, model, mesh, label_files)
  print(f'[rm] {n_records} rankings, {total_steps} steps of {config.batch_size} prompts x '
        f'{config.k_max} completions x {config.data.seq_len} tokens on mesh {dict(mesh.shape)}',
        flush=True)
  result = loop.run(
      train.step, init_state=_init_state_fn(config, model_cfg, train.tx, mesh,
                                            train.state_shardings),
      abstract_state=train.abstract_state,
      data=pipeline.make_dataset('rankings', label_files['train'], tok,
                                 batch_size=common.per_process(config.batch_size), seq_len=config.data.seq_len,
                                 prompt_len=config.data.prompt_len, seed=config.seed,
                                 k_max=config.k_max),
      stage_dir=str(stage_dir), base_rng=jax.random.key(config.seed),
      schedule=loop.Schedule.from_config(config, total_steps),
      fingerprint=checkpoint.fingerprint(config_lib.model_roles(config)),
      batch_shardings=train.batch_shardings, loss_key='rm/loss', eval_fn=lambda s: valid(s.params),
      flops_per_token=common.train_flops_per_token(model_cfg, config.data.seq_len))
  common.exit_if_stopped(result)
  params = result.state.params
  final = {**valid(params), **_valid_fn(config, tok, model, mesh, label_files, TEST_SETS)(params)}
  print('[rm] ' + '  '.join(f'{k} {v:.4f}' for k, v in final.items()), flush=True)
  demos = common.data_paths(config)['rm_demonstrations']
  return {'steps': result.step, 'checkpoint_step': result.step,
          'train_loss': result.metrics.get('rm/loss', float('nan')),
          'train_accuracy': result.metrics.get('rm/accuracy', float('nan')),
          **final, **_bias_summary(params, config, tok, model, mesh, demos)}
