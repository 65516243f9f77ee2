"""Reward-model stage through the CLI, its normalisation bias, and kill-and-resume (SFT and RM).

Kill-and-resume (issue 4, Reliability): a run stopped by SIGTERM part-way and rerun with the
same command must log exactly the metrics.jsonl of a run that was never interrupted.
"""
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rlhf_jax import config_lib, optim, rm, stages, state
from rlhf_jax.data import pipeline
from rlhf_jax.stages import common
from rlhf_jax.stages import rm as rm_stage
from stage_fixtures import cli_args, copy_workdir, run_cli, stage_config

RM_ARGS = ('--config.total_steps=3', '--config.batch_size=8', '--config.log_every=1',
           '--config.checkpoint_every=1', '--config.eval_every=2')
SFT_ARGS = ('--config.total_steps=5', '--config.log_every=1', '--config.checkpoint_every=1',
            '--config.eval_every=2')


def _metrics(workdir, stage):
  lines = (workdir / stage / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines if line]


def _run_and_kill(args, metrics_path, at_step: int, log_path) -> int:
  """Starts the CLI, sends SIGTERM once step `at_step` is logged; returns its exit status."""
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, '-m', 'rlhf_jax.main', *args], stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
      logged = metrics_path.read_text().splitlines() if metrics_path.exists() else []
      if any(json.loads(line)['step'] >= at_step for line in logged if line.endswith('}')):
        proc.send_signal(signal.SIGTERM)
        break
      time.sleep(0.02)
    return proc.wait(timeout=600)


def _assert_resume_equals_uninterrupted(tiny_workdir, tmp_path, stage, copied, args, at_step):
  reference = copy_workdir(tiny_workdir, tmp_path / 'reference', copied)
  result = run_cli(*cli_args(stage, reference, *args))
  assert result.returncode == 0, result.stderr[-3000:]
  killed = copy_workdir(tiny_workdir, tmp_path / 'killed', copied)
  status = _run_and_kill(cli_args(stage, killed, *args), killed / stage / 'metrics.jsonl',
                         at_step, tmp_path / 'killed.log')
  assert status == 128 + signal.SIGTERM, (tmp_path / 'killed.log').read_text()[-3000:]
  assert not (killed / stage / 'summary.json').exists()
  stopped_at = _metrics(killed, stage)[-1]['step']
  assert stopped_at < _metrics(reference, stage)[-1]['step']  # it really stopped part-way
  result = run_cli(*cli_args(stage, killed, *args))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from step' in result.stderr
  assert _metrics(killed, stage) == _metrics(reference, stage)
  return reference


def test_rm_cli_kill_and_resume_bias_and_summary(tiny_workdir, tmp_path):
  reference = _assert_resume_equals_uninterrupted(
      tiny_workdir, tmp_path, 'rm', ('data', 'sft_rm', 'samples', 'labels'), RM_ARGS, 1)
  summary = stages.summary(str(reference), 'rm')
  assert summary['steps'] == 3
  for key in ('rm/valid_train_accuracy', 'rm/valid_heldout_accuracy', 'rm/valid_train_loss',
              'rm/valid_heldout_loss', 'train_loss', 'train_accuracy'):
    assert np.isfinite(summary[key]), key
  assert 'rm/valid_heldout_accuracy' in _metrics(reference, 'rm')[1]  # eval at step 2
  _assert_bias_centres_demonstrations(reference, summary)


def _assert_bias_centres_demonstrations(workdir, summary):
  """Recomputes every RM-split demonstration's score from the checkpoint: mean 0 after the bias."""
  config = stage_config('rm', workdir)
  model_cfg = config_lib.to_model_config(config.model)
  mesh = common.mesh(config)
  params = common.load_init_params('rm', str(workdir), model_cfg, 'scalar', mesh)
  tok = common.tokenizer(config, model_cfg)
  rows = list(pipeline.make_dataset(
      'demonstrations', common.data_paths(config)['rm_demonstrations'], tok, batch_size=1,
      seq_len=config.data.seq_len, prompt_len=config.data.prompt_len, shuffle=False,
      num_epochs=1, shard_index=0, shard_count=1))
  tokens, mask = (np.concatenate([r[k] for r in rows]) for k in ('tokens', 'mask'))
  scores = rm.reward_scores(params, tokens, mask, model=state.make_model(model_cfg, 'scalar'),
                            bias=summary['reward_bias'])
  assert len(rows) == summary['demonstrations_scored']
  assert abs(float(np.mean(scores))) < 1e-4 * max(1.0, abs(summary['reward_bias']))
  assert abs(summary['demo_score_mean_after']) < 1e-4 * max(1.0, abs(summary['reward_bias']))


def test_sft_cli_kill_and_resume(tiny_workdir, tmp_path):
  _assert_resume_equals_uninterrupted(tiny_workdir, tmp_path, 'sft', ('data', 'pretrain'),
                                      SFT_ARGS, 2)


def test_rm_starts_from_its_own_sft_trunk(tiny_workdir):
  config = stage_config('rm', tiny_workdir)
  model_cfg = config_lib.to_model_config(config.model)
  mesh = common.mesh(config)
  tx = optim.make_optimizer(config.optimizer, 10)
  _, shardings = state.abstract_train_state(model_cfg, 'scalar', tx, mesh)
  init = rm_stage._init_state_fn(config, model_cfg, tx, mesh, shardings)()
  sft = common.load_init_params('sft_rm', str(tiny_workdir), model_cfg, 'lm', mesh)
  jax.tree.map(np.testing.assert_array_equal, init.params['trunk'], sft['trunk'])
  assert 'scalar_head' in init.params


def test_rankings_longer_than_k_max_are_refused_before_compiling(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'wd', ('data', 'sft_rm', 'labels', 'samples'))
  with pytest.raises(config_lib.ConfigError, match='k_max=3'):
    stages.run(stage_config('rm', workdir, k_max=3))


def test_eval_batches_cover_every_record_once(tiny_workdir):
  config = stage_config('rm', tiny_workdir)
  tok = common.tokenizer(config, config_lib.to_model_config(config.model))
  path = tiny_workdir / 'labels' / 'rankings_valid_train.jsonl'
  batches = list(common.padded_batches('rankings', path, tok, config, 8, config.k_max))
  n = sum(real for _, real in batches)
  assert n == len(path.read_text().splitlines())
  last, real = batches[-1]
  assert last['tokens'].shape == (8, config.k_max, config.data.seq_len)
  assert not last['valid'][real:].any() and (last['ranks'][real:] == -1).all()
