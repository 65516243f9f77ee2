"""Multi-process runs: 2 local CPU processes x 2 fake devices equal 1 process x 4 devices.

Both runs use the same global batch on the same ('data': 4) mesh, so every logged metric must
match: each process feeding its half of every batch, the cross-process collectives (gloo), the
cooperative checkpoint writes and process-0-only logging all take part. The multi-process run
goes through launch/local_multiprocess.sh, as a user starts it.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from stage_fixtures import WORLD_SCALE, copy_workdir

from rlhf_jax import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 2


def _single(args: list[str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  return subprocess.run([sys.executable, '-m', 'rlhf_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _multi(args: list[str], log_dir: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', 'launch/local_multiprocess.sh', '-n', '2', '-d', '2', '-l',
                         str(log_dir), '--', *args], cwd=REPO, capture_output=True, text=True,
                        timeout=600)


def _metrics(stage_dir: pathlib.Path) -> list[dict]:
  lines = (stage_dir / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines if line]


def _assert_same_metrics(single: pathlib.Path, multi: pathlib.Path) -> None:
  a, b = _metrics(single), _metrics(multi)
  assert [m['step'] for m in a] == [m['step'] for m in b] == list(range(1, STEPS + 1))
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_allclose(y[key], x[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _run_both(tmp_path: pathlib.Path, source: pathlib.Path, stages: list[str],
              args: list[str], stage: str) -> None:
  """Runs `args` once per layout on private copies of `source`; compares `stage`'s metrics."""
  dirs = {}
  for layout in ('single', 'multi'):
    workdir = copy_workdir(source, tmp_path / layout, stages)
    full = [*args, f'--workdir={workdir}']
    result = _single(full) if layout == 'single' else _multi(full, tmp_path / 'logs')
    assert result.returncode == 0, f'{layout}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
    dirs[layout] = workdir / stage
  # Only process 0 writes logs and the summary; the stage completed once for both.
  assert (dirs['multi'] / 'summary.json').exists()
  _assert_same_metrics(dirs['single'], dirs['multi'])


def test_two_process_sft_equals_single_process(tiny_workdir, tmp_path):
  args = ['--config=configs/sft.py', f'--config.data.world_scale={WORLD_SCALE}',
          f'--config.total_steps={STEPS}', '--config.log_every=1', '--config.eval_every=0',
          '--config.select_by=last']
  _run_both(tmp_path, tiny_workdir, ['data', 'pretrain'], args, 'sft')


def test_two_process_ppo_equals_single_process(inputs, configs, tmp_path):
  # PPO without ptx: packed pretraining rows are packed per process, so they would differ.
  args = [f'--config={configs}/ppo.py', f'--config.total_steps={STEPS}']
  _run_both(tmp_path, inputs, None, args, 'ppo')


@pytest.mark.parametrize('flags, match', [
    (dict(coordinator_address='localhost:1234'), 'go together'),
    (dict(coordinator_address='localhost:1234', num_processes=2, process_id=2), 'not in'),
])
def test_inconsistent_flags_are_config_errors(flags, match):
  values = dict(dict(coordinator_address=None, num_processes=None, process_id=None), **flags)
  with pytest.raises(distributed.DistributedError, match=match):
    distributed.detect(**values)


def test_detection(monkeypatch):
  for var in ('SLURM_STEP_NODELIST', 'SLURM_PROCID', 'SLURM_NTASKS'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, '_on_cloud_tpu_vm', lambda: False)
  assert distributed.detect(None, None, None) is None
  assert distributed.detect('h:1', 2, 1) == 'flags'
  monkeypatch.setenv('SLURM_STEP_NODELIST', 'node[001-002]')
  monkeypatch.setenv('SLURM_PROCID', '0')
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert distributed.detect(None, None, None) is None  # one task: nothing to join
  monkeypatch.setenv('SLURM_NTASKS', '8')
  assert distributed.detect(None, None, None) == 'slurm'
  monkeypatch.setattr(distributed, '_on_cloud_tpu_vm', lambda: True)
  assert distributed.detect('h:1', 2, 0) == 'flags'  # explicit flags win


@pytest.mark.slow
def test_main_rejects_partial_flags_in_one_line():
  result = subprocess.run([sys.executable, '-m', 'rlhf_jax.main', '--config=configs/sft.py',
                           '--num_processes=2'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'go together' in result.stderr
