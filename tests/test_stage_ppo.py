"""The ppo / ppo_ptx stages: a short run with a follow-up stage (`then`), and kill-and-resume.

The PPO workdir (`inputs`, conftest) holds the world and pretrain stages of the shared tiny
workdir, the pretrained model standing in for sft_init and a reward model made from the RM's
pretrained trunk; the small PPO settings (`configs`) are config files, so that a follow-up stage
(`then`, loaded from the config folder) gets them too.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from unittest import mock

import jax
import numpy as np
import pytest
from stage_fixtures import PPO_TOTAL as TOTAL
from stage_fixtures import WORLD_SCALE, copy_workdir, small_ppo_config

from rlhf_jax import checkpoint, config_lib, ppo, stages
from rlhf_jax.stages import common, validation, world
from rlhf_jax.stages import eval as eval_stage
from rlhf_jax.stages import ppo as ppo_stage

REPO = pathlib.Path(__file__).resolve().parents[1]


def _lines(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope='module')
def reference(inputs, configs, tmp_path_factory) -> pathlib.Path:
  """ppo_ptx for TOTAL iterations in-process, with `then = ('ppo',)`, logging to an offline
  W&B project (the follow-up, from the config file, does not)."""
  workdir = copy_workdir(inputs, tmp_path_factory.mktemp('ppo_reference'))
  config = config_lib.load_config(f'{configs}/ppo_ptx.py')
  config.workdir, config.then = str(workdir), ('ppo',)
  config.wandb_project = 'rlhf_jax_tests'
  with mock.patch.dict(os.environ, {'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true'}):
    stages.run(config)
  return workdir


def test_ppo_ptx_run_and_follow_up(reference, configs):
  summary = stages.summary(str(reference), 'ppo_ptx')
  assert summary['iterations'] == TOTAL and summary['episodes'] == TOTAL * 16
  assert np.isfinite(summary['objective/scores']) and np.isfinite(summary['ptx/loss'])
  logged = _lines(reference / 'ppo_ptx' / 'metrics.jsonl')
  assert [m['step'] for m in logged] == list(range(1, TOTAL + 1))
  assert all('ptx/loss' in m and 'objective/kl' in m for m in logged)
  perf = _lines(reference / 'ppo_ptx' / 'perf.jsonl')
  assert all(m[f'time/{phase}'] > 0 for m in perf for phase in ('generate', 'score', 'train'))
  # `then` ran the follow-up stage with its own config from the same folder: PPO, no ptx.
  follow_up = _lines(reference / 'ppo' / 'metrics.jsonl')
  assert stages.summary(str(reference), 'ppo')['iterations'] == TOTAL
  assert not any('ptx/loss' in m for m in follow_up)

  # Evaluation loads the EMA policy by its field name; it has moved away from sft_init.
  config = config_lib.load_config(f'{configs}/ppo_ptx.py')
  abstract, shardings = common.param_shardings(config_lib.to_model_config(config.model), 'lm',
                                               common.mesh(config))
  ema = checkpoint.load_params(str(reference / 'ppo_ptx'), abstract, shardings,
                               field='ema_params')
  init = checkpoint.load_params(str(reference / 'sft_init'), abstract, shardings)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                       ema, init)
  assert 0 < max(jax.tree.leaves(moved)) < 1


def _launch(workdir: pathlib.Path, configs: pathlib.Path, cache: pathlib.Path) -> subprocess.Popen:
  """The CLI on `workdir`; the rerun reads the first run's compiled programs from `cache`."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return subprocess.Popen([sys.executable, '-m', 'rlhf_jax.main', f'--config={configs}/ppo_ptx.py',
                           f'--workdir={workdir}'], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_rollout_tables_of_decoded_episodes_reach_every_sink(reference):
  """Every rollout_table_every (2) iterations: 8 episodes with their training prompt, the text
  the policy answered, and its score and KL, in rollouts.jsonl, TensorBoard and W&B."""
  tables = _lines(reference / 'ppo_ptx' / 'rollouts.jsonl')
  assert [t['step'] for t in tables] == list(range(2, TOTAL + 1, 2))
  prompts = {r['prompt'] for r in _lines(world.paths(reference / 'data')['prompts_ppo'])}
  for table in tables:
    assert len(table['rows']) == ppo_stage.ROLLOUT_TABLE_ROWS
    for row in table['rows']:
      assert row['prompt'] in prompts and row['response']
      assert np.isfinite(row['score']) and np.isfinite(row['kl'])
  # The tables differ: the policy answered other prompts, or answered differently.
  assert tables[0]['rows'] != tables[-1]['rows']
  events = b''.join(p.read_bytes() for p in (reference / 'ppo_ptx' / 'tensorboard').rglob('*')
                   if p.is_file())
  assert b'rollouts' in events and tables[0]['rows'][0]['response'][:20].encode() in events

  # W&B (offline): the run named in wandb_run_id holds the tables, the metrics and the summary.
  run_id = (reference / 'ppo_ptx' / 'wandb_run_id').read_text().strip()
  [run] = (reference / 'ppo_ptx' / 'wandb').glob(f'offline-run-*-{run_id}')
  logged = (run / f'run-{run_id}.wandb').read_bytes()
  summary = stages.summary(str(reference), 'ppo_ptx')
  for name in ('objective/kl', 'ppo/policy/loss', 'ptx/loss', 'optimizer.lr', 'kl_coef',
               'checkpoint_step'):
    assert name.encode() in logged, name
  logged_tables = [json.loads(path.read_text())['data']
                   for path in run.glob('files/media/table/rollouts_*.table.json')]
  assert sorted(rows[0][1] for rows in logged_tables) == sorted(
      table['rows'][0]['response'] for table in tables)
  assert summary['iterations'] == TOTAL
  assert not (reference / 'ppo' / 'wandb').exists()


def test_kill_and_resume_gives_identical_metrics(reference, inputs, configs, tmp_path):
  workdir = copy_workdir(inputs, tmp_path / 'killed')
  metrics = workdir / 'ppo_ptx' / 'metrics.jsonl'
  run = _launch(workdir, configs, tmp_path / 'jax_cache')
  while run.poll() is None and not (metrics.exists() and metrics.read_text()):
    time.sleep(0.1)
  run.send_signal(signal.SIGTERM)  # during iteration 2: it ends after that iteration
  output = run.communicate(timeout=300)[0]
  assert run.returncode == 128 + signal.SIGTERM, output
  assert stages.summary(str(workdir), 'ppo_ptx') is None
  assert len(_lines(metrics)) < TOTAL

  resumed = _launch(workdir, configs, tmp_path / 'jax_cache')
  output = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, output
  assert 'resuming from step' in output
  assert metrics.read_text() == (reference / 'ppo_ptx' / 'metrics.jsonl').read_text()
  rollouts = (workdir / 'ppo_ptx' / 'rollouts.jsonl').read_text()
  assert rollouts == (reference / 'ppo_ptx' / 'rollouts.jsonl').read_text()


def test_validation_selects_an_iteration_and_eval_loads_it(inputs, tmp_path):
  """With validation on, the EMA policy is judged at iterations 0, 2 and 4 against SFT; the
  iteration of highest validation Likert is kept, and the eval stage loads exactly it: its
  parameters, judged again on the same prompts, key and judges, give the selected value."""
  folder = tmp_path / 'configs'
  folder.mkdir()
  (folder / 'ppo_ptx.py').write_text(small_ppo_config('ppo_ptx', valid_prompts=16))
  config = config_lib.load_config(f'{folder}/ppo_ptx.py')
  config.workdir = str(copy_workdir(inputs, tmp_path / 'wd'))
  summary = stages.run(config)

  curve = summary['selection_curve']
  assert [p['iteration'] for p in curve] == [0, 2, 4]
  likerts = [p['valid/likert'] for p in curve]
  assert summary['checkpoint_step'] == curve[int(np.argmax(likerts))]['iteration']
  assert summary['selected_value'] == max(likerts)
  assert sorted(summary['best_of_n']) == ['gold', 'rm']
  for by_n in summary['best_of_n'].values():
    assert sorted(by_n) == ['1', '2']
    assert by_n['2']['kl'] == pytest.approx(np.log(2) - 0.5)
  # The gold score's pick is never worse by the gold score than the RM's.
  assert summary['best_of_n']['gold']['2']['gold'] >= summary['best_of_n']['rm']['2']['gold']

  eval_config = config_lib.load_config(f'{REPO}/configs/eval.py')
  eval_config.workdir, eval_config.data.world_scale = config.workdir, WORLD_SCALE
  mesh = common.mesh(config)
  model, params = eval_stage.load_policy(eval_config, 'ppo_ptx', mesh)
  tok = common.tokenizer(config, model)
  settings = ppo_stage.settings_from_config(config, eos_id=tok.eos_id, pad_id=tok.pad_id)
  reference, reward, bias = ppo_stage._load_inputs(config, settings, mesh)
  frozen = ppo.Frozen(reference, reward, jax.numpy.asarray(bias))
  rollout = validation.Rollout(config, tok, model, settings.reward_model, frozen, mesh)
  vset = validation.validation_set(config, tok)
  key = jax.random.key(config.seed)
  sft = common.load_init_params('sft', config.workdir, model, 'lm', mesh)
  again = validation.judge(vset, rollout(params, vset, key), rollout(sft, vset, key).texts)
  assert again['valid/likert'] == summary['selected_value']
