"""What a pipeline run says of itself: the stages it plans, "stage k of n", the overall ETA."""
import pytest

from rlhf_jax import checkpoint, config_lib, stages
from rlhf_jax.stages import progress

MAIN_JOB = progress.MAIN_JOB_SECONDS


def test_counts_stages_and_estimates_from_the_measured_shares():
  pipeline = progress.Pipeline(['world', 'pretrain', 'sft'], progress.MAIN_JOB_GEOMETRY)
  assert pipeline.start('world') == 'stage 1 of 3'  # nothing finished: no speed known yet
  pipeline.finish('world', 2 * MAIN_JOB['world'])  # this machine: twice the measured time
  eta = 2 * (MAIN_JOB['pretrain'] + MAIN_JOB['sft'])
  assert pipeline.eta() == pytest.approx(eta)
  assert pipeline.start('pretrain') == f'stage 2 of 3, pipeline ETA {progress.metrics.duration(eta)}'
  # A stage found stale on the way is counted when it starts.
  assert pipeline.start('sft_init').startswith('stage 3 of 4')
  assert pipeline.planned == ['world', 'pretrain', 'sft_init', 'sft']


def test_no_eta_for_a_geometry_that_was_not_measured():
  pipeline = progress.Pipeline(['world', 'pretrain'], 'small')
  pipeline.start('world')
  pipeline.finish('world', 10.0)
  assert pipeline.start('pretrain') == 'stage 2 of 2' and pipeline.eta() is None


def test_plan_runs_missing_inputs_first_and_skips_complete_ones(tmp_path):
  config = config_lib.load_config('configs/ppo_ptx.py')
  config.workdir = str(tmp_path)
  planned = stages.plan(config)
  assert planned[-2:] == ['ppo_ptx', 'eval'] and len(planned) == len(set(planned))
  assert set(planned) == set(stages.NEEDS) - {'ppo'}
  for stage in planned:  # every input before the stage that reads it
    assert all(planned.index(need) < planned.index(stage) for need in stages.NEEDS[stage])
  for done in ('world', 'pretrain', 'sft'):
    folder = stages.stage_dir(str(tmp_path), done)
    folder.mkdir(parents=True)
    checkpoint.write_summary(str(folder), {'stage': done})
  assert stages.plan(config) == [s for s in planned if s not in ('world', 'pretrain', 'sft')]
  sft = config_lib.load_config('configs/sft.py')
  sft.workdir = str(tmp_path)
  assert stages.plan(sft) == [] and stages.plan(sft, force=True) == ['sft']


def test_the_layout_lists_every_stage_in_the_order_of_the_registry():
  assert tuple(stages.NEEDS) == stages.layout.PIPELINE and set(stages.RUNNERS) == set(stages.NEEDS)
