"""Real-data recipes cannot run here (no downloads): their configs must load, validate and
resolve their inputs to the user's data and checkpoint, never to the mini world."""
import re

import pytest

from rlhf_jax import config_lib, stages

RECIPES = ('configs/recipes/hh.py', 'configs/recipes/tldr.py')
STAGES = ('sft', 'sft_init', 'rm', 'ppo_ptx', 'label')


@pytest.mark.parametrize('path', RECIPES)
@pytest.mark.parametrize('stage', STAGES)
@pytest.mark.parametrize('geometry', ['pythia-1b', 'gpt2'])
def test_recipe_stage_validates_and_uses_user_inputs(path, stage, geometry, tmp_path):
  config = config_lib.load_config(f'{path}:stage={stage},geometry={geometry}')
  assert config.stage == stage and config.model.geometry == geometry
  config_lib.validate(config)
  config.workdir = str(tmp_path)
  stages.check_inputs(config)  # the recipe's own file, not configs/, gives its inputs
  needs = stages.needs(config)
  assert 'world' not in needs and 'pretrain' not in needs and 'sample' not in needs
  if config.stage in ('sft', 'sft_init'):
    assert config.init_from == f'hf:checkpoints/{geometry}'
  # Training differentiates the model's own layer loop, as at the paper's geometries, not the
  # unrolled one of the CPU presets the shipped configs load at.
  assert not config.get('unroll_update_layers')
  if 'data' in config:
    assert config.data.tokenizer == f'checkpoints/{geometry}'
    assert config.data.seq_len <= config.model.max_len


def test_recipe_keeps_the_paper_numbers():
  ppo = config_lib.load_config('configs/recipes/hh.py')  # ppo_ptx at pythia-1b by default
  assert (ppo.stage, ppo.model.geometry) == ('ppo_ptx', 'pythia-1b')
  assert (ppo.batch_size, ppo.minibatch_size, ppo.ptx_coef, ppo.kl_coef) == (512, 64, 27.8, 0.02)
  assert ppo.ptx_per_episode == 8
  rm = config_lib.load_config('configs/recipes/hh.py:stage=rm')
  assert (rm.batch_size, rm.optimizer.lr, rm.epochs) == (64, 9e-6, 1)


def test_inputs_come_from_the_recipe_file():
  config = config_lib.load_config('configs/recipes/tldr.py:stage=ppo_ptx,geometry=gpt2')
  rm = stages.dependency_config(config, 'rm')
  assert (rm.stage, rm.model.geometry) == ('rm', 'gpt2')
  assert rm.data.rankings == 'data/tldr/rankings.jsonl'


@pytest.mark.parametrize('arg, message', [
    ('stage=sft,geometry=tiny', "recipe geometry 'tiny'; use one of ['gpt2', 'pythia-1b']"),
    ('stage=eval', "recipe stage 'eval'; use one of ['label', 'ppo_ptx', 'rm', 'sft', 'sft_init']"),
    ('gpt2', "recipe argument 'gpt2'; use stage=STAGE,geometry=NAME"),
])
def test_bad_recipe_arguments_are_config_errors(arg, message):
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    config_lib.load_config(f'configs/recipes/hh.py:{arg}')
