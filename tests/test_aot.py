"""The ahead-of-time fit check, compiling for a small TPU slice from this CPU host (libtpu)."""
import json
import subprocess
import sys

import pytest

from rlhf_jax import aot

SLICE = 'v5p:2x2x1'  # 4 chips, 95 GiB each


def run_aot(*args):
  return subprocess.run([sys.executable, '-m', 'rlhf_jax.aot', *args], capture_output=True,
                        text=True, timeout=600)


def _report(*args) -> dict:
  result = run_aot(*args, '--json')
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout)


@pytest.mark.slow
def test_tiny_sft_fits_on_a_small_slice():
  report = _report('--config=configs/sft.py:tiny', f'--topology={SLICE}')
  assert report['topology'] == SLICE and set(report['params']) == {'policy'}
  step = report['steps']['sft_step']
  assert step['fits'] is True and step['flops'] > 0
  assert 0 < step['bytes_per_device'] < step['hbm_per_device'] == 95 * aot.GIB


@pytest.mark.slow
def test_oversized_setting_does_not_fit_and_is_not_a_crash():
  # A 1.3B model with fp32 activations and no remat on a 512-row batch needs ~TBs per chip.
  report = _report('--config=configs/sft.py:1.3b', f'--topology={SLICE}',
                   '--config.model.dtype=float32', '--config.model.remat=none',
                   '--config.batch_size=512')
  step = report['steps']['sft_step']
  assert step['fits'] is False and step['bytes_per_device'] > step['hbm_per_device']


@pytest.mark.slow
def test_tiny_ppo_ptx_reports_every_phase_and_role():
  result = run_aot('--config=configs/ppo_ptx.py:tiny', f'--topology={SLICE}')
  assert result.returncode == 0, result.stderr[-3000:]
  for word in ('generate', 'score', 'ppo_step', 'policy', 'reference', 'reward', 'value'):
    assert word in result.stdout


@pytest.mark.parametrize('topology', ['v99:2x2', 'nonsense'])
@pytest.mark.slow
def test_unknown_topology_is_a_one_line_error(topology):
  result = run_aot('--config=configs/sft.py:tiny', f'--topology={topology}')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and topology in result.stderr


@pytest.mark.slow
def test_missing_topology_is_a_one_line_error():
  result = run_aot('--config=configs/sft.py:tiny')
  assert result.returncode == 2 and 'no --topology' in result.stderr


@pytest.mark.parametrize('spec', ['configs/sft.py:1.3b', 'configs/rm.py:6b',
                                  'configs/ppo_ptx.py:175b'])
def test_paper_configs_name_a_topology_and_bf16_compute(spec):
  from rlhf_jax import config_lib  # after conftest's device flags
  config = config_lib.load_config(spec)
  assert config.topology.startswith('v5p:') and config.model.dtype == 'bfloat16'
  assert config.model.param_dtype == 'float32' and config.model.remat != 'none'


def test_oom_message_parsing():
  message = ('RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total '
             'memory required for HLO temporaries (378.32G) exceeds available HBM (95.73G).')
  assert aot._oom_bytes(message) == ('temp', int(378.32 * 2**30))
  assert aot._oom_bytes('Used 120.5G of 95.74G hbm. Exceeded hbm capacity by 24.8G.') == (
      'total', int(120.5 * 2**30))
  assert aot._oom_bytes('some other failure') is None
