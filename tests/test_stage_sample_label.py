"""Sample and label stages: their CLI runs (in the shared fixture), outputs and human imports."""
import json
import random

import numpy as np
import pytest

from rlhf_jax import checkpoint, stages
from rlhf_jax.data import records
from rlhf_jax.stages import label, sample
from rlhf_jax.world import labelers
from stage_fixtures import SAMPLED_PROMPTS, cli_args, copy_workdir, run_cli, stage_config


def test_completion_plan_spreads_k_over_policies_deterministically():
  plan = sample.completion_plan(500, 2, 4, 9, np.random.default_rng(3))
  assert plan == sample.completion_plan(500, 2, 4, 9, np.random.default_rng(3))
  assert {len(p) for p in plan} == set(range(4, 10))
  for policies in plan:
    assert abs(policies.count(0) - policies.count(1)) <= 1
  assert sample.completion_plan(10, 3, 4, 4, np.random.default_rng(0))[0].count(2) >= 1


def test_sample_cli_writes_k_completions_from_every_policy(tiny_workdir):
  assert (tiny_workdir / 'cli_sample.log').read_text().startswith('returncode 0')
  summary = stages.summary(str(tiny_workdir), 'sample')
  files = sample.paths(stages.stage_dir(str(tiny_workdir), 'sample'))
  train = records.read_records(files['train'], 'samples')
  valid = records.read_records(files['valid'], 'samples')
  assert len(train) == summary['train']['prompts'] == SAMPLED_PROMPTS
  assert len(valid) == summary['valid']['prompts'] > 0
  for r in train + valid:
    assert 4 <= len(r['completions']) <= 9
    assert sorted(set(r['meta']['policies'])) == ['pretrain', 'sft']
  assert sum(summary['train']['k_histogram'].values()) == len(train)


def test_label_cli_uses_train_and_heldout_labelers(tiny_workdir):
  assert (tiny_workdir / 'cli_label.log').read_text().startswith('returncode 0')
  summary = stages.summary(str(tiny_workdir), 'label')
  files = label.paths(stages.stage_dir(str(tiny_workdir), 'label'))
  samples = {split: records.read_records(path, 'samples') for split, path in
             sample.paths(stages.stage_dir(str(tiny_workdir), 'sample')).items()}
  for name, split, prefix in (('train', 'train', 'train_'), ('valid_train', 'valid', 'train_'),
                              ('valid_heldout', 'valid', 'heldout_')):
    recs = records.read_records(files[name], 'rankings')  # valid: >= 2 distinct ranks each
    assert len(recs) == summary[name]['prompts']
    assert len(recs) + summary[name]['all_tie_dropped'] == len(samples[split])
    assert {r['prompt'] for r in recs} <= {s['prompt'] for s in samples[split]}
    assert all(r['labeler'].startswith(prefix) for r in recs)
    assert all(4 <= len(r['completions']) <= 9 for r in recs)
    assert 0 <= summary[name]['tie_share'] < 0.5
    assert 0 <= summary[name]['oracle_accuracy'] <= 1  # an RM's ceiling, recorded per file
  assert summary['source'] == 'simulated'


def test_pools_are_the_worlds():
  from rlhf_jax.world import build  # pylint: disable=g-import-not-at-top
  world = build.build_world(seed=0, scale=0.001, n_pretrain=1)
  pools = label.labeler_pools(0, 40)
  assert pools['train'] == world.labelers['train']
  assert pools['heldout'] == world.labelers['heldout']


class _Tied(labelers.Labeler):

  def rank(self, prompt, completions):
    return [0] * len(completions)


def test_all_tie_rankings_are_dropped_and_counted():
  tied = _Tied('train_tie', (1.0,), 0.1, 0.0, 0)
  samples = [{'prompt': 'p', 'completions': ['a', 'b', 'c', 'd']}] * 3
  recs, dropped = label.simulate(samples, [tied], random.Random(0))
  assert (recs, dropped) == ([], 3)


def _rankings(n):
  return [{'prompt': f'prompt {i}', 'completions': ['a', 'b', 'c', 'd'], 'ranks': [0, 1, 1, 2],
           'labeler': f'human_{i % 3}'} for i in range(n)]


def test_human_rankings_are_imported(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'wd', stages=('data', 'samples'))
  human = tmp_path / 'human.jsonl'
  records.write_records(human, 'rankings', _rankings(20))
  config = stage_config('label', workdir)
  config.data.rankings = str(human)
  summary = stages.run(config)
  files = label.paths(stages.stage_dir(str(workdir), 'label'))
  assert summary['source'] == 'human'
  assert records.read_records(files['train'], 'rankings') == _rankings(18)
  assert records.read_records(files['valid_train'], 'rankings') == _rankings(20)[18:]
  assert not files['valid_heldout'].exists()
  assert summary['train']['k_histogram'] == {'4': 18}


def test_bad_human_rankings_are_a_one_line_error_and_write_nothing(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'wd', stages=('data', 'samples'))
  bad = tmp_path / 'bad.jsonl'
  lines = [json.dumps(r) for r in _rankings(3)]
  lines[1] = lines[1].replace('"ranks": [0, 1, 1, 2]', '"ranks": [0, 1, 7, 2]')
  bad.write_text('\n'.join(lines) + '\n')
  result = run_cli(*cli_args('label', workdir, f'--config.data.rankings={bad}'))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert f'{bad}:2: ranks[2]' in last
  label_dir = stages.stage_dir(str(workdir), 'label')
  assert not label_dir.exists() or not any(label_dir.iterdir())
  assert not checkpoint.is_complete(str(label_dir))


def test_samples_records_need_two_completions(tmp_path):
  with pytest.raises(records.RecordError, match='completions'):
    records.write_records(tmp_path / 'x.jsonl', 'samples', [{'prompt': 'p', 'completions': ['a']}])
