"""experiments/instructgpt_mini/sweep.py: what it reads from a PPO run, its table, and a sweep
of two KL coefficients run end to end at the tiny size from the shared PPO inputs."""
import json
import pathlib
import subprocess
import sys

import pytest
from stage_fixtures import REPO, copy_workdir, small_ppo_config

# The experiment's scripts import each other as a script's folder does.
sys.path.insert(0, str(REPO / 'experiments' / 'instructgpt_mini'))
import sweep  # noqa: E402


def _point(iteration: int, reward: float, nll: float) -> dict:
  return {'iteration': iteration, 'valid/rm_score': reward, 'valid/likert': 4.0 + reward,
          'valid/gold': 0.5, 'valid/kl': float(iteration), 'valid/pretrain_loss': nll,
          'valid/win_rate_vs_sft': 0.4 + reward / 10}


SUMMARY = {'checkpoint_step': 8,
           'selection_curve': [_point(0, 0.0, 1.10), _point(8, 0.5, 1.12), _point(16, 0.9, 1.2)]}


def test_point_reads_the_final_and_the_selected_iteration_against_iteration_0():
  point = sweep.point(SUMMARY)
  assert point['final']['iteration'] == 16 and point['final']['valid/rm_score'] == 0.9
  assert point['final']['regression'] == pytest.approx(0.1)
  assert point['selected']['iteration'] == 8
  assert point['selected']['regression'] == pytest.approx(0.02)
  assert point['selected']['valid/win_rate_vs_sft'] == pytest.approx(0.45)


def test_point_without_a_selection_takes_the_final_iteration():
  point = sweep.point({**SUMMARY, 'checkpoint_step': None})
  assert point['selected']['iteration'] == 16


def test_table_has_a_final_and_a_selected_row_per_value():
  lines = sweep.table('kl_coef', {0.0: sweep.point(SUMMARY), 2.0: sweep.point(SUMMARY)})
  lines = lines.splitlines()
  assert lines[0].startswith('| beta | iteration | reward |') and len(lines) == 2 + 4
  assert lines[2].startswith('| 0 | 16 (final) | 0.900 |') and lines[2].endswith('| +0.1000 |')
  assert lines[5].startswith('| 2 | 8 (selected) | 0.500 |')


def test_the_workdirs_own_run_is_the_point_at_its_value(tmp_path):
  stage = tmp_path / 'w' / 'ppo_ptx'
  stage.mkdir(parents=True)
  (stage / 'summary.json').write_text(json.dumps(SUMMARY))
  (stage / 'provenance.json').write_text(json.dumps({'config': {'kl_coef': 0.02, 'seed': 0}}))
  assert sweep.run(tmp_path / 'w', 'kl_coef', 0.02, seed=0) == SUMMARY
  assert not (tmp_path / 'w_beta').exists()


def test_sweep_trains_one_ppo_ptx_per_value_from_the_linked_inputs(inputs, tmp_path):
  workdir = copy_workdir(inputs, tmp_path / 'w')
  config = tmp_path / 'ppo_ptx.py'
  config.write_text(small_ppo_config('ppo_ptx', valid_prompts=8))
  result = subprocess.run(
      [sys.executable, 'experiments/instructgpt_mini/sweep.py', '--field=kl_coef',
       '--values=0,2', f'--workdir={workdir}', f'--config={config}',
       '--set=config.total_steps=2'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| ') and
          '(final)' in line]
  assert [row.split(' | ')[0] for row in rows] == ['| 0', '| 2']
  for value in (0, 2):
    run = tmp_path / 'w_beta' / str(value)
    assert (run / 'sft_init').is_symlink() and (run / 'rm').is_symlink()  # nothing retrained
    provenance = json.loads((run / 'ppo_ptx' / 'provenance.json').read_text())
    assert provenance['config']['kl_coef'] == value
    summary = json.loads((run / 'ppo_ptx' / 'summary.json').read_text())
    assert [p['iteration'] for p in summary['selection_curve']] == [0, 2]
