"""Simulated labelers: calibrated agreement, valid rankings with ties, Likert and metadata."""
import random

import numpy as np
import pytest

from rlhf_jax.world import corrupt, labelers, tasks


@pytest.fixture(scope='module')
def samples():
  rng = random.Random(123)
  names = list(tasks.TABLE1_SHARES)
  weights = [tasks.TABLE1_SHARES[n] for n in names]
  prompts = [tasks.sample_prompt(rng.choices(names, weights)[0], rng) for _ in range(800)]
  return corrupt.calibration_samples(prompts, seed=7)


def test_training_labelers_agree_like_the_papers(samples):
  train = labelers.measure_agreement(labelers.make_pool(seed=0), samples)
  assert 0.69 <= train <= 0.77, train  # Paper §3.4: 72.6 +- 1.5%.


def test_heldout_labelers_agree_more(samples):
  train = labelers.measure_agreement(labelers.make_pool(seed=0), samples)
  heldout = labelers.measure_agreement(labelers.make_pool(seed=0, heldout=True), samples)
  assert heldout > train + 0.01, (train, heldout)
  assert 0.73 <= heldout <= 0.81, heldout  # Paper: 77.3 +- 1.3%.


def test_agreement_is_chance_without_signal():
  # Two demonstrations each: the labelers can only disagree by noise, so agreement is near 50%.
  rng = random.Random(0)
  prompts = [tasks.sample_prompt('generation', rng) for _ in range(400)]
  samples = [(p, [tasks.demonstrate(p, rng) for _ in range(4)]) for p in prompts]
  agreement = labelers.measure_agreement(labelers.make_pool(seed=0), samples)
  assert 0.4 <= agreement <= 0.6, agreement


def test_ranks_from_utilities_dense_with_ties():
  assert labelers.ranks_from_utilities([0.1, 0.9, 0.5]) == [2, 0, 1]
  assert labelers.ranks_from_utilities([0.5, 0.51, 0.2, 0.9], tie_eps=0.02) == [1, 1, 2, 0]


def test_rank_prefers_demonstrations(samples):
  pool = labelers.make_pool(seed=0)
  wins = total = 0
  rng = random.Random(0)
  for prompt, _ in samples[:200]:
    demo = tasks.demonstrate(prompt, rng)
    toxic = corrupt.corrupt(prompt, demo, 'toxic', rng)
    off_task = corrupt.corrupt(prompt, demo, 'off_task', rng)
    ranks = rng.choice(pool).rank(prompt, [demo, toxic, off_task])
    assert min(set(ranks)) == 0 and len(ranks) == 3
    wins += ranks[0] < ranks[2]
    total += 1
  assert wins / total > 0.9


def test_labeler_is_deterministic_and_records_are_well_formed(samples):
  labeler = labelers.make_pool(seed=0)[3]
  prompt, completions = samples[0]
  record = labeler.ranking_record(prompt, completions)
  assert record == labeler.ranking_record(prompt, completions)
  assert record['labeler'] == 'train_03' and len(record['ranks']) == len(completions)
  assert labelers.make_pool(seed=0) == labelers.make_pool(seed=0)
  assert labelers.make_pool(seed=0) != labelers.make_pool(seed=1)


def test_likert_and_metadata(samples):
  pool = labelers.make_pool(seed=0)
  rng = random.Random(0)
  demo_scores, toxic_scores, agree = [], [], []
  for prompt, _ in samples[:300]:
    labeler = rng.choice(pool)
    demo = tasks.demonstrate(prompt, rng)
    toxic = corrupt.corrupt(prompt, demo, 'toxic', rng)
    demo_scores.append(labeler.likert(prompt, demo))
    toxic_scores.append(labeler.likert(prompt, toxic))
    flags = labeler.metadata(prompt, toxic)
    agree.append(flags['inappropriate'])
    assert set(flags) == {'fails_instruction', 'hallucination', 'satisfies_constraint',
                          'inappropriate'}
    if tasks.judge(prompt, toxic).satisfies_constraint is None:
      assert flags['satisfies_constraint'] is None
  assert all(1 <= s <= 7 for s in demo_scores + toxic_scores)
  assert np.mean(demo_scores) > np.mean(toxic_scores) + 0.5
  assert 0.85 <= np.mean(agree) < 1.0  # Flags are reported with a small error rate.


def test_oracle_accuracy_is_one_on_gold_order_and_zero_reversed():
  rng = random.Random(5)
  pool = labelers.make_pool(seed=2, n=10)
  rankings = []
  for name in sorted(tasks.FAMILIES)[:6]:
    prompt = tasks.sample_prompt(name, rng)
    demo = tasks.demonstrate(prompt, rng)
    completions = [demo, '', 'the the the', demo + ' ' + demo]
    gold = [labelers.gold_utility(pool, prompt, c) for c in completions]
    rankings.append({'prompt': prompt, 'completions': completions,
                     'ranks': labelers.ranks_from_utilities(gold, tie_eps=0.0)})
  assert labelers.oracle_accuracy(pool, rankings) == 1.0
  reversed_ranks = [dict(r, ranks=[max(r['ranks']) - k for k in r['ranks']]) for r in rankings]
  assert labelers.oracle_accuracy(pool, reversed_ranks) == 0.0
