"""Selection on a validation curve and the best-of-n check (stages/selection.py, validation.py)."""
import math
import random

import jax
import numpy as np
import pytest

from rlhf_jax import checkpoint, config_lib
from rlhf_jax.stages import selection, validation
from rlhf_jax.world import build, prompts, tasks

FINGERPRINT = checkpoint.fingerprint({'policy': (config_lib.GEOMETRIES['tiny'], 'lm')})


def test_best_params_keeps_the_best_iteration_of_a_curve(tmp_path):
  curve = {0: 3.1, 8: 3.5, 16: 3.2, 24: 3.5, 32: 3.4}  # a tie at 24 keeps the earlier 8
  best = selection.BestParams(str(tmp_path), 'valid/likert', 'max', FINGERPRINT)
  for step, value in curve.items():
    best.update(step, value, {'w': np.full(3, step, np.float32)})
  best.close()
  assert best.summary()['checkpoint_step'] == 8 and best.summary()['selected_value'] == 3.5
  checkpoint.write_summary(str(tmp_path), best.summary())
  abstract = {'w': jax.ShapeDtypeStruct((3,), np.float32)}
  np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path), abstract)['w'], 8.0)
  # A resumed run remembers the best so far: a worse point is not kept.
  again = selection.BestParams(str(tmp_path), 'valid/likert', 'max', FINGERPRINT)
  again.update(40, 3.4, {'w': np.full(3, 40, np.float32)})
  again.close()
  assert again.summary()['checkpoint_step'] == 8


def test_best_of_n_kl():
  assert validation.best_of_n_kl(1) == 0.0
  assert validation.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_best_of_n_picks_the_rm_favourite_and_judges_it():
  """Sample 0 is empty (RM 0), sample 1 the ideal answer (RM 1); the baseline is empty. Best of
  1 ties the baseline everywhere; best of 2 picks the ideal answers, which labelers prefer."""
  rng = random.Random(0)
  names = sorted(tasks.FAMILIES)
  texts = [tasks.sample_prompt(names[i % len(names)], rng) for i in range(40)]
  demos = [d['completion'] for d in prompts.demonstrations(
      [{'prompt': p} for p in texts], seed=1)]
  pool = build.labeler_pool(0, 'train')
  vset = validation.ValidationSet(
      prompts=texts, categories=[tasks.parse(p)[0].name for p in texts],
      tokens=np.zeros((40, 4), np.int32), mask=np.ones((40, 4), bool),
      judges=[pool[i % len(pool)] for i in range(40)], pool=pool)
  empty = validation.Responses([''] * 40, np.zeros(40), np.zeros(40))
  ideal = validation.Responses(demos, np.ones(40), np.zeros(40))
  result = validation.best_of_n([empty, ideal], vset, baseline=[''] * 40)
  assert sorted(result) == ['1', '2']
  assert result['1']['win_rate_vs_sft'] == 0.5 and result['1']['rm_score'] == 0.0
  assert result['2']['rm_score'] == 1.0 and result['2']['win_rate_vs_sft'] > 0.9
  assert result['2']['likert'] > result['1']['likert']
  assert result['2']['gold'] > result['1']['gold']
  assert result['2']['kl'] == pytest.approx(validation.best_of_n_kl(2))
  # An RM that prefers the empty answers picks them; the gold score still picks the ideal ones.
  wrong = validation.Responses(demos, -np.ones(40), np.zeros(40))
  assert validation.best_of_n([empty, wrong], vset, [''] * 40)['2']['win_rate_vs_sft'] == 0.5
  by_gold = validation.best_of_n([empty, wrong], vset, [''] * 40, pick_by='gold')
  assert by_gold['2'] == {**result['2'], 'rm_score': -1.0}
  # Every power of two up to the samples drawn: 64 samples check n = 1 ... 64 (Gao et al.).
  many = validation.best_of_n([empty] * 63 + [ideal], vset, [''] * 40)
  assert sorted(many, key=int) == ['1', '2', '4', '8', '16', '32', '64']
  assert many['32']['rm_score'] == 0.0 and many['64']['rm_score'] == 1.0
  twelve = validation.best_of_n([empty] * 12, vset, [''] * 40)
  assert sorted(twelve, key=int) == ['1', '2', '4', '8']
