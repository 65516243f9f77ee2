"""The command line: dry runs and config errors, in a subprocess as a user runs them."""
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test starts the CLI in a subprocess


def run_main(*args):
  return subprocess.run([sys.executable, '-m', 'rlhf_jax.main', *args], capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize('spec', ['configs/sft.py:175b', 'configs/ppo_ptx.py:1.3b',
                                  'configs/rm.py:tiny', 'configs/ppo_ptx.py'])
def test_dry_run_describes_without_allocating(spec):
  result = run_main(f'--config={spec}', '--dry_run')
  assert result.returncode == 0, result.stderr
  assert 'params' in result.stdout and 'mesh' in result.stdout
  if spec == 'configs/sft.py:175b':
    out = result.stdout
    millions = float(out.split('policy')[1].split('M params')[0].split()[-1].replace(',', ''))
    assert 170_000 < millions < 180_000


def test_unknown_geometry_is_one_line_error():
  result = run_main('--config=configs/sft.py:huge', '--dry_run')
  assert result.returncode != 0
  assert 'Traceback' not in result.stderr
  assert "unknown geometry 'huge'" in result.stderr.strip().splitlines()[-1]


def test_unknown_override_is_one_line_error():
  result = run_main('--config=configs/sft.py', '--config.no_such_field=3', '--dry_run')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert "no field 'no_such_field'" in result.stderr


@pytest.mark.parametrize('args, message', [
    (('--config=configs/ppo.py', '--config.minibatch_size=7'),
     r'batch_size=\d+ is not a multiple of minibatch_size=7'),
    (('--config=configs/ppo_ptx.py:1.3b', '--config.batch_size=500'),
     r'batch_size=500 is not a multiple of minibatch_size=\d+'),
])
def test_dry_run_fails_on_what_the_run_would_refuse(args, message):
  result = run_main(*args, '--dry_run')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  # The error is the last line (libraries may warn before it).
  assert re.fullmatch(f'error: {message}', result.stderr.strip().splitlines()[-1]), result.stderr


@pytest.mark.parametrize('entry, spec', [('rlhf_jax.main', None),
                                         ('rlhf_jax.aot', 'configs/rm.py:1.3b')])
def test_help_lists_flags_config_fields_and_geometries(entry, spec):
  config = [f'--config={spec}'] if spec else []
  result = subprocess.run([sys.executable, '-m', entry, *config, '--help'], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert '--workdir' in result.stdout or '--topology' in result.stdout
  assert re.search(r"^  --config\.batch_size=\d+$", result.stdout, re.M)
  assert '--config.model.geometry=' in result.stdout and '175b, 2.7b' in result.stdout


def test_dry_run_echoes_workdir_and_overrides():
  result = run_main('--config=configs/sft.py:small', '--config.total_steps=7', '--dry_run')
  assert result.returncode == 0, result.stderr
  assert 'workdir runs/mini-small' in result.stdout
  assert 'overrides --config.total_steps=7' in result.stdout


def test_outside_the_repository_a_missing_config_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'rlhf_jax.main', '--dry_run'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and result.stderr.count('\n') == 1, result.stderr
  assert result.stderr.startswith('error: configs/ppo_ptx.py: no such config file')
