"""Real-data recipes cannot run here (no downloads): their configs must load, validate and
resolve their inputs to the user's data and checkpoint, never to the mini world."""
import glob
import pathlib

import pytest

from rlhf_jax import config_lib, stages

RECIPE_FILES = sorted(p for p in glob.glob('configs/recipes/*/*.py')
                      if pathlib.Path(p).stem != 'recipe')


def test_recipes_exist():
  assert len(RECIPE_FILES) >= 5


@pytest.mark.parametrize('path', RECIPE_FILES)
@pytest.mark.parametrize('geometry', ['pythia-1b', 'gpt2'])
def test_recipe_stage_validates_and_uses_user_inputs(path, geometry, tmp_path):
  config = config_lib.load_config(f'{path}:{geometry}')
  config_lib.validate(config)
  config.workdir = str(tmp_path)
  stages.check_inputs(config, pathlib.Path(path).parent)
  needs = stages.needs(config)
  assert 'world' not in needs and 'pretrain' not in needs and 'sample' not in needs
  if config.stage in ('sft', 'sft_init'):
    assert config.init_from == f'hf:checkpoints/{geometry}'
  if 'data' in config:
    assert config.data.tokenizer == f'checkpoints/{geometry}'
    assert config.data.seq_len <= config.model.max_len


def test_recipe_keeps_the_paper_numbers():
  ppo = config_lib.load_config('configs/recipes/hh/ppo_ptx.py')
  assert (ppo.batch_size, ppo.minibatch_size, ppo.ptx_coef, ppo.kl_coef) == (512, 64, 27.8, 0.02)
  assert ppo.ptx_per_episode == 8
  rm = config_lib.load_config('configs/recipes/hh/rm.py')
  assert (rm.batch_size, rm.optimizer.lr, rm.epochs) == (64, 9e-6, 1)


def test_unknown_recipe_geometry_is_a_config_error():
  with pytest.raises(config_lib.ConfigError, match='recipe geometry'):
    config_lib.load_config('configs/recipes/hh/sft.py:tiny')
