"""Fit regression guard (issue 21): the paper stages' steps at a small geometry, compiled for a
TPU slice, may not need more temporaries per device than experiments/aot/guard.json records.

A failure means a change made a step's compiled program larger. If that is intended, rerun
`python experiments/aot/refresh.py` (it rewrites the record and the README's fit tables) and say
why in the commit; otherwise find the change. Each compile runs in a subprocess, as in
test_aot.py: loading libtpu must not touch the test process's CPU backend.
"""
import json
import subprocess
import sys

import pytest

from rlhf_jax import aot

RECORD = json.loads(aot.GUARD_RECORD.read_text())


def guard_temps(stage: str, **model_fields) -> dict[str, dict[str, int]]:
  """aot.guard_temps of one guard stage, its model fields overridden, compiled in a subprocess."""
  code = ('import json, sys; from rlhf_jax import aot; '
          f'c = aot.guard_config({stage!r}); c.model.update({model_fields!r}); '
          f'print(json.dumps(aot.guard_temps({{{stage!r}: c}})))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_record_covers_every_guard_stage():
  assert RECORD['topology'] == aot.GUARD_TOPOLOGY and RECORD['tolerance'] == aot.GUARD_TOLERANCE
  assert set(RECORD['temp_bytes']) == set(aot.GUARD_STAGES)


@pytest.mark.parametrize('stage', aot.GUARD_STAGES)
@pytest.mark.slow
def test_temporaries_have_not_grown(stage):
  problems = aot.guard_growth(guard_temps(stage), RECORD['temp_bytes'])
  assert not problems, '\n'.join(problems) + (
      f"\nrecorded at {RECORD['commit']} with libtpu {RECORD['libtpu']}; if the growth is "
      'intended, run experiments/aot/refresh.py and say why in the commit')


# Without remat the differentiated step keeps every layer's activations for the backward pass;
# the PPO rollout phases only run forwards, so their temporaries stay as recorded.
DIFFERENTIATED = {'sft': 'sft_step', 'rm': 'rm_step', 'ppo_ptx': 'ppo_step'}


@pytest.mark.parametrize('stage', aot.GUARD_STAGES)
@pytest.mark.slow
def test_guard_reports_a_larger_temporary(stage):
  grown = guard_temps(stage, remat='none')
  problems = aot.guard_growth(grown, RECORD['temp_bytes'])
  step = DIFFERENTIATED[stage]
  assert len(problems) == 1 and problems[0].startswith(f'{stage}/{step}: temporaries'), problems
  assert grown[stage][step] > RECORD['temp_bytes'][stage][step] * (1 + aot.GUARD_TOLERANCE)


def test_growth_within_tolerance_passes_and_a_missing_record_is_reported():
  recorded = {'sft': {'sft_step': 1000}}
  assert aot.guard_growth({'sft': {'sft_step': 1050}}, recorded, tolerance=0.05) == []
  assert aot.guard_growth({'sft': {'sft_step': 1051}}, recorded, tolerance=0.05)
  assert 'no recorded value' in aot.guard_growth({'rm': {'rm_step': 1}}, recorded)[0]
