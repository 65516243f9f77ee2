"""Geometries, shipped configs and validation."""
import glob

import pytest

from rlhf_jax import config_lib, stages, state

CONFIG_FILES = sorted(glob.glob('configs/*.py'))


def test_config_files_exist():
  assert len(CONFIG_FILES) >= 5


@pytest.mark.parametrize('path', CONFIG_FILES)
@pytest.mark.parametrize('geometry', ['tiny', '1.3b', '6b', '175b'])
def test_every_shipped_config_loads_and_validates(path, geometry, tmp_path):
  config = config_lib.load_config(f'{path}:{geometry}')
  config_lib.validate(config)
  assert config.stage
  config.workdir = str(tmp_path)  # every input still to run with its shipped config
  stages.check_inputs(config)


RM_WITH_K5 = """
from rlhf_jax import config_lib
shipped = config_lib.sibling_config(str(config_lib.CONFIG_DIR / 'rm.py'), 'rm')

def get_config(arg=None):
  c = shipped.get_config(arg)
  c.k_max = 5
  return c
"""


def test_input_stages_use_the_configs_the_config_names(tmp_path):
  """A copied folder of configs runs its own files for the missing inputs, also when a file
  extends a shipped one (loading it inside get_config); `stage_configs` redirects them; a config
  built in code falls back to the shipped files."""
  (tmp_path / 'ppo.py').write_text(
      'from rlhf_jax import config_lib\n\n'
      f"def get_config(arg=None):\n  return config_lib.load_config('{config_lib.CONFIG_DIR}/ppo.py')\n")
  (tmp_path / 'rm.py').write_text(RM_WITH_K5)
  config = config_lib.load_config(f'{tmp_path}/ppo.py')
  assert config.config_file == str((tmp_path / 'ppo.py').resolve())
  assert stages.dependency_config(config, 'rm').k_max == 5
  config.stage_configs = f'{config_lib.CONFIG_DIR}/{{stage}}.py:{{geometry}}'
  assert stages.dependency_config(config, 'rm').k_max == 9
  config.stage_configs = config.config_file = ''
  assert stages.dependency_spec(config, 'rm') == f'{config_lib.CONFIG_DIR}/rm.py:tiny'


@pytest.mark.parametrize('name', sorted(config_lib.GPT3_PAPER_PARAMS))
def test_gpt3_param_counts_within_3_percent_of_paper(name):
  n = state.count_params(state.abstract_params(config_lib.GEOMETRIES[name], 'lm'))
  paper = config_lib.GPT3_PAPER_PARAMS[name]
  assert abs(n - paper) / paper < 0.03, (name, n, paper)


def test_cpu_presets_sizes():
  tiny = state.count_params(state.abstract_params(config_lib.GEOMETRIES['tiny'], 'lm'))
  small = state.count_params(state.abstract_params(config_lib.GEOMETRIES['small'], 'lm'))
  assert 0.5e6 < tiny < 2e6 and 5e6 < small < 20e6


def test_paper_geometries_are_self_consistent():
  for name in config_lib.GPT3_PAPER_PARAMS:
    m = config_lib.GEOMETRIES[name]
    assert m.n_heads * m.d_head == m.d_model and m.vocab_size % 128 == 0, name


def test_unknown_geometry_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match='unknown geometry'):
    config_lib.load_config('configs/sft.py:3b')


def test_prompt_longer_than_context_is_rejected():
  config = config_lib.load_config('configs/sft.py:tiny')
  config.data.prompt_len = config.model.max_len
  with pytest.raises(config_lib.ConfigError, match='exceeds the context'):
    config_lib.validate(config)


def test_bad_model_is_rejected_with_role():
  config = config_lib.load_config('configs/ppo.py:tiny')
  config.reward_model.n_kv_heads = 3
  with pytest.raises(config_lib.ConfigError, match='reward model: n_heads=8 not divisible'):
    config_lib.validate(config)


@pytest.mark.parametrize('field, value, message', [
    ('minibatch_size', 7, r'batch_size=64 is not a multiple of minibatch_size=7'),
    ('rollout_chunks', 3, r'batch_size=64 is not a multiple of rollout_chunks=3'),
    ('ptx_chunks', 3, r'ptx_per_episode \* minibatch_size = 32 pretraining rows are not a '
     r'multiple of ptx_chunks=3'),
])
def test_ppo_batches_must_split(field, value, message):
  config = config_lib.load_config('configs/ppo_ptx.py:tiny')
  config.batch_size, config.minibatch_size, config.ptx_per_episode = 64, 16, 2
  config[field] = value
  with pytest.raises(config_lib.ConfigError, match=f'^{message}$'):
    config_lib.validate(config)


@pytest.mark.parametrize('field, value, processes, message', [
    ('batch_size', 36, 1, r'batch_size=36 is not divisible by the mesh batch axes \(data x fsdp '
     r'= 8\)'),
    ('minibatch_size', 12, 1, r'minibatch_size=12 is not divisible by the mesh batch axes \(data '
     r'x fsdp = 8\)'),
    ('batch_size', 24, 3, r'minibatch_size=16 is not divisible by the 3 processes'),
])
def test_batches_must_split_over_the_mesh_and_processes(field, value, processes, message):
  config = config_lib.load_config('configs/ppo_ptx.py:tiny')
  config.batch_size, config.minibatch_size = 64, 16
  config_lib.validate_batches(config, 8)
  config[field] = value
  with pytest.raises(config_lib.ConfigError, match=f'^{message}$'):
    config_lib.validate_batches(config, 8, processes)
