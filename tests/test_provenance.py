"""Stages that know their config (issue 17, item 1): a complete stage is reused only for the config
it was made with and while its inputs are the ones it read; a forced run that was interrupted
resumes; each geometry has its own default workdir."""
import json

import ml_collections
import pytest
import stage_fixtures
from stage_fixtures import stage_config

from rlhf_jax import checkpoint, config_lib, stages
from rlhf_jax.stages import provenance


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'stage': 'sft', 'workdir': 'a', 'log_every': 10,
                                    'model': {'geometry': 'tiny', 'n_layers': 4},
                                    'mesh': {'data': -1}, **fields})


def test_config_changes_name_the_fields_that_differ_and_ignore_reporting_ones():
  recorded = provenance.record(_config(then=('eval',)), {})
  assert provenance.config_changes(recorded, _config(then=('eval',))) == []
  # Where the run writes and how often it logs do not change what it computes.
  assert provenance.config_changes(recorded, _config(workdir='b', log_every=1, then=())) == []
  asked = _config(then=('eval',), model={'geometry': 'small', 'n_layers': 6}, kl_coef=0.05)
  assert provenance.config_changes(recorded, asked) == [
      'kl_coef: (none) -> 0.05', 'model.geometry: "tiny" -> "small"', 'model.n_layers: 4 -> 6']


def test_an_input_made_again_is_a_changed_input(tmp_path):
  sft = tmp_path / 'sft'
  sft.mkdir()
  checkpoint.write_summary(str(sft), {'stage': 'sft', 'finished': '1'})
  recorded = provenance.record(_config(), {'sft': sft})
  assert provenance.changed_inputs(recorded, {'sft': sft}) == []
  checkpoint.write_summary(str(sft), {'stage': 'sft', 'finished': '2'})
  assert provenance.changed_inputs(recorded, {'sft': sft}) == ['sft']
  # An input the recorded run did not read (a policy trained since) is a change too.
  assert provenance.changed_inputs(recorded, {'sft': sft, 'ppo': sft}) == ['sft', 'ppo']


@pytest.mark.parametrize('stage', ['ppo_ptx', 'rm', 'sft_rm', 'pretrain_rm', 'eval'])
def test_each_geometry_has_its_own_default_workdir(stage):
  assert config_lib.load_config(f'configs/{stage}.py').workdir == 'runs/mini'
  assert config_lib.load_config(f'configs/{stage}.py:small').workdir == 'runs/mini-small'


def _pretrain(workdir, **overrides):
  fields = dict(total_steps=2, log_every=1, eval_every=0, checkpoint_every=1)
  return stage_config('pretrain', workdir, **{**fields, **overrides})


@pytest.mark.slow
def test_reuse_is_refused_for_another_config_and_redone_for_new_inputs(tiny_world, tmp_path,
                                                                       capsys):
  workdir = stage_fixtures.copy_workdir(tiny_world, tmp_path / 'w', ['data'])
  first = stages.run(_pretrain(workdir))
  assert stages.run(_pretrain(workdir)) == first  # the same config: reused
  # A training stage's config and final numbers are in TensorBoard's HParams dashboard.
  assert list((workdir / 'pretrain' / 'tensorboard' / 'hparams').glob('events.out.tfevents*'))

  with pytest.raises(stages.WorkdirError, match=r'complete with another config \(total_steps: '
                     r'2 -> 3\): use another --workdir, or --force'):
    stages.run(_pretrain(workdir, total_steps=3))
  assert stages.summary(str(workdir), 'pretrain') == first  # nothing was touched

  stages.run(stage_config('world', workdir), force=True)  # the input is made again
  capsys.readouterr()
  again = stages.run(_pretrain(workdir))
  printed = capsys.readouterr().out
  assert "[pretrain] world changed since" in printed
  # The banner: the stale stage is counted as it starts, and names its devices.
  assert f'[pretrain] stage 1 of 1: running in {workdir / "pretrain"} on 8 x cpu' in printed
  assert again['finished'] != first['finished'] and again['steps'] == 2
  assert stages.run(_pretrain(workdir)) == again


@pytest.mark.slow
def test_an_interrupted_forced_run_resumes_unless_its_config_changed(tiny_world, tmp_path,
                                                                     capsys):
  workdir = stage_fixtures.copy_workdir(tiny_world, tmp_path / 'w', ['data'])
  stages.run(_pretrain(workdir))
  folder = workdir / 'pretrain'
  # What an interrupted run leaves: checkpoints and the provenance, no summary.
  (folder / checkpoint.SUMMARY_FILE).unlink()
  capsys.readouterr()
  stages.run(_pretrain(workdir), force=True)
  assert 'resuming from step 2' in capsys.readouterr().err

  (folder / checkpoint.SUMMARY_FILE).unlink()
  with pytest.raises(stages.WorkdirError, match='holds an interrupted run with another config'):
    stages.run(_pretrain(workdir, total_steps=1))
  summary = stages.run(_pretrain(workdir, total_steps=1), force=True)  # starts over
  assert summary['steps'] == 1
  assert 'resuming' not in capsys.readouterr().err
  recorded = json.loads((folder / provenance.FILE).read_text())
  assert recorded['config']['total_steps'] == 1


def test_an_eval_elsewhere_links_every_complete_policy_stage(tmp_path):
  source = tmp_path / 'source'
  for stage in ('data', 'pretrain', 'sft', 'ppo_ptx'):
    (source / stage).mkdir(parents=True)
    (source / stage / checkpoint.SUMMARY_FILE).write_text('{}')
  (source / 'ppo').mkdir()  # interrupted: not linked
  config = stage_config('eval', tmp_path / 'eval')
  assert stages.link_inputs(config, str(source)) == ['data', 'pretrain', 'sft', 'ppo_ptx']


@pytest.mark.parametrize('stage', ['sft', 'sft_rm', 'rm'])
def test_a_stage_started_from_a_folder_still_reads_and_links_the_world(stage, tmp_path):
  source = tmp_path / 'source'
  for folder in ('data', 'pretrain', 'pretrain_rm', 'samples', 'labels'):
    (source / folder).mkdir(parents=True)
    (source / folder / checkpoint.SUMMARY_FILE).write_text('{}')
  config = stage_config(stage, tmp_path / 'run')
  config.init_from = str(tmp_path / 'elsewhere' / 'sft')
  assert 'world' in stages.needs(config) and stages.INIT_STAGES[stage] not in stages.needs(config)
  assert 'data' in stages.link_inputs(config, str(source))
  config.data.tokenizer = str(tmp_path / 'user_tokenizer')  # user data: no world at all
  assert 'world' not in stages.needs(config)


@pytest.mark.slow
def test_a_sweep_links_the_finished_inputs_and_trains_only_its_stage(inputs, configs, tmp_path):
  before = {p: p.read_bytes() for p in sorted(inputs.rglob('*')) if p.is_file()}
  sweep = tmp_path / 'sweep'
  config = config_lib.load_config(f'{configs}/ppo.py')
  config.workdir, config.kl_coef = str(sweep), 0.05
  linked = stages.link_inputs(config, str(inputs))
  assert linked == ['data', 'pretrain', 'sft', 'sft_init', 'pretrain_rm', 'rm']
  assert stages.run(config)['iterations'] == stage_fixtures.PPO_TOTAL
  assert (sweep / 'ppo').is_dir() and not (sweep / 'ppo').is_symlink()
  assert all((sweep / name).is_symlink() for name in linked)
  # The world forced in the sweep is written anew there; the linked source stays as it was.
  stages.run(stage_config('world', sweep), force=True)
  assert (sweep / 'data').is_dir() and not (sweep / 'data').is_symlink()
  assert {p: p.read_bytes() for p in sorted(inputs.rglob('*')) if p.is_file()} == before
  with pytest.raises(stages.WorkdirError, match='is the workdir itself'):
    stages.link_inputs(config, str(sweep))
