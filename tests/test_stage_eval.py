"""The eval stage on the shared tiny workdir: report shape, skipped policies, SFT vs itself, and
which PPOState field is evaluated (and sampled by the sample stage)."""
import json
import re

import jax
import numpy as np
import pytest
from stage_fixtures import copy_workdir, fake_ppo_stage, stage_config

from rlhf_jax import config_lib, stages
from rlhf_jax.stages import common
from rlhf_jax.stages import eval as eval_stage
from rlhf_jax.stages import sample as sample_stage


def _eval_config(workdir, **overrides):
  config = stage_config('eval', workdir, batch_size=16, public_eval_items=8, pretrain_eval_batches=1,
                   max_test_prompts=24, examples=2, **overrides)
  config.data.response_len = 12
  return config


@pytest.fixture(scope='module')
def workdir(tiny_workdir, tmp_path_factory):
  """The shared tiny world, pretrain and sft, plus a PPO stage whose EMA params are SFT's."""
  path = copy_workdir(tiny_workdir, tmp_path_factory.mktemp('eval'), ('data', 'pretrain', 'sft'))
  fake_ppo_stage(path, 'ppo', policy_from='pretrain', ema_from='sft')
  return path


def test_ppo_params_field_selects_ema_or_raw_policy(workdir):
  loaded = {}
  for ppo_params in ('ema', 'policy'):
    config = _eval_config(workdir, ppo_params=ppo_params)
    loaded[ppo_params] = eval_stage.load_policy(config, 'ppo', common.mesh(config))[1]
  config = _eval_config(workdir)
  for name, source in (('ema', 'sft'), ('policy', 'pretrain')):
    expected = eval_stage.load_policy(config, source, common.mesh(config))[1]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 loaded[name], expected)


def test_sample_stage_samples_a_ppo_stage_by_its_ema_policy(workdir):
  """The sample stage's policies may be RL policies (paper 3.5): a PPO folder gives its EMA."""
  config = stage_config('sample', workdir)
  mesh = common.mesh(config)
  _, params = sample_stage._policy(config, 'ppo', mesh)
  _, sft = sample_stage._policy(config, 'sft', mesh)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, sft)


def test_eval_report(workdir, capsys):
  # An extra policy from a folder (here SFT's own, so it must tie with SFT everywhere).
  config = _eval_config(workdir, extra_policies=f'sft_copy={workdir / "sft"}')
  summary = stages.run(config)
  out = workdir / 'eval'
  report = json.loads((out / 'report.json').read_text())
  # ppo_ptx: missing, skipped; the extra policy comes last.
  assert list(report['policies']) == ['gpt', 'gpt_prompted', 'sft', 'ppo', 'sft_copy']
  assert summary['policies'] == list(report['policies'])
  keys = {'win_rate_vs_sft', 'win_rate_ci', 'likert', 'hallucination_rate',
          'fails_instruction_rate', 'inappropriate_rate', 'pretrain_loss', 'public_evals'}
  for entry in report['policies'].values():
    assert keys <= set(entry)
    assert entry['n_prompts'] == 24
    lo, hi = entry['win_rate_ci']
    assert 0 <= lo <= entry['win_rate_vs_sft'] <= hi <= 1
    assert 1 <= entry['likert'] <= 7
    assert set(entry['public_evals']) == {'cloze_colour', 'cloze_food', 'cloze_home', 'sentiment',
                                          'story_recall'}
  sft, ppo_ema = report['policies']['sft'], report['policies']['ppo']
  assert sft['win_rate_vs_sft'] == 0.5 and sft['ties'] == 24
  # The PPO stage's EMA params are SFT's: the same samples, hence all ties and the same tax.
  assert ppo_ema['win_rate_vs_sft'] == 0.5
  assert ppo_ema['pretrain_loss'] == sft['pretrain_loss']
  assert ppo_ema['iteration'] == 1 and ppo_ema['selected_by'] == 'last iteration'
  copy = report['policies']['sft_copy']
  assert copy['win_rate_vs_sft'] == 0.5 and copy['pretrain_loss'] == sft['pretrain_loss']
  gpt, prompted = report['policies']['gpt'], report['policies']['gpt_prompted']
  assert gpt['public_evals'] == prompted['public_evals']  # same parameters, zero-shot
  markdown = (out / 'report.md').read_text()
  for name in report['policies']:
    assert f'| {name} |' in markdown
  for plot in ('win_rate.png', 'metadata.png', 'alignment_tax.png', 'training_curves.png'):
    assert (out / plot).read_bytes()[:4] == b'\x89PNG'
    assert f']({plot})' in markdown
  # Each complete stage's wall time, as its summary records it, in pipeline order.
  seconds = report['stage_seconds']
  assert summary['stage_seconds'] == seconds and {'world', 'pretrain', 'sft'} <= set(seconds)
  assert all(seconds[s] == stages.summary(str(workdir), s)['seconds'] for s in seconds)
  assert list(seconds) == [s for s in stages.NEEDS if s in seconds]
  assert 'wall time (minutes): world ' in markdown
  # The training curves are the complete training stages' logged losses, point for point.
  curves = report['training_curves']
  assert {'pretrain', 'sft'} <= set(curves)
  for stage, metrics in curves.items():
    logged = [json.loads(line) for line in (workdir / stage / 'metrics.jsonl').read_text().splitlines()]
    for name, points in metrics.items():
      assert points == [[row['step'], row[name]] for row in logged if name in row]
  assert len((out / 'responses.jsonl').read_text().splitlines()) == 24
  # A rerun reuses the complete stage and prints its table again.
  capsys.readouterr()
  assert stages.run(config) == summary
  printed = capsys.readouterr().out
  assert '[eval] already complete' in printed and f'[eval] report: {out / "report.md"}' in printed
  assert '[eval] wall time (minutes): world ' in printed
  assert re.search(r'^  sft +0\.500 ', printed, re.M)


def test_eval_needs_the_sft_baseline(tmp_path):
  config = _eval_config(tmp_path, policies='gpt,sft')
  with pytest.raises(FileNotFoundError, match='baseline'):
    eval_stage.available_policies(config)
  with pytest.raises(config_lib.ConfigError, match='baseline'):
    eval_stage.available_policies(_eval_config(tmp_path, policies='gpt,ppo'))


@pytest.mark.parametrize('extra, error', [
    ('big', config_lib.ConfigError),  # no folder
    ('gpt=/somewhere', config_lib.ConfigError),  # a built-in name
    ('big=/nonexistent/pretrain', FileNotFoundError),
])
def test_bad_extra_policies(workdir, extra, error):
  with pytest.raises(error, match='big' if error is FileNotFoundError else 'extra_policies'):
    eval_stage.available_policies(_eval_config(workdir, extra_policies=extra))
