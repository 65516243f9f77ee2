"""The world stage writes the InstructGPT-mini datasets, tokenizer and card, reproducibly."""
import json

from rlhf_jax import config_lib, stages
from rlhf_jax.data import records, tokenizers
from rlhf_jax.stages import world


def world_config(workdir, seed=0):
  config = config_lib.load_config('configs/world.py')
  config.workdir, config.seed, config.data.world_scale = str(workdir), seed, 0.01
  return config


def file_bytes(directory):
  return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob('*'))
          if p.is_file() and p.name != 'summary.json'}


def test_world_stage_writes_valid_files_and_is_reproducible(tiny_world, tmp_path):
  # tiny_world (conftest) is this config's world, built earlier, perhaps by another process.
  first = stages.summary(str(tiny_world), 'world')
  stages.run(world_config(tmp_path / 'b'))
  a, b = tiny_world / 'data', tmp_path / 'b' / 'data'
  assert file_bytes(a) == file_bytes(b)
  paths = world.paths(a)
  kinds = {'pretrain': 'text', 'sft_train': 'demonstrations', 'prompts_ppo': 'prompts',
           'prompts_test': 'prompts', 'rm_demonstrations': 'demonstrations'}
  for role, kind in kinds.items():
    assert records.read_records(paths[role], kind)
  card = json.loads(paths['card'].read_text())
  assert 0.69 < card['labeler_agreement_train'] < 0.77
  assert card['labeler_agreement_heldout'] > card['labeler_agreement_train']
  assert first['labeler_agreement_train'] == card['labeler_agreement_train']
  tok = tokenizers.load_tokenizer(paths['tokenizer'])
  assert tok.vocab_size == config_lib.GEOMETRIES['tiny'].vocab_size and tok.pad_id != tok.eos_id


def test_different_seed_changes_the_world(tiny_world, tmp_path):
  stages.run(world_config(tmp_path / 'b', seed=1))
  assert file_bytes(tiny_world / 'data') != file_bytes(tmp_path / 'b' / 'data')


def test_complete_stage_is_not_rerun(tmp_path, capsys):
  config = world_config(tmp_path)
  stages.run(config)
  assert f'[world] stage 1 of 1: running in {tmp_path / "data"}' in capsys.readouterr().out
  card = world.paths(tmp_path / 'data')['card']
  card.write_text('{}')
  stages.run(config)
  assert card.read_text() == '{}' and 'already complete' in capsys.readouterr().out
