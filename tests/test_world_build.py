"""Whole-world build: determinism, customer-disjoint splits, paper proportions, the data card."""
import collections

import pytest

from rlhf_jax.world import build, prompts, tasks


@pytest.fixture(scope='module')
def world():
  return build.build_world(seed=3, scale=0.05, n_pretrain=2000)


def test_same_seed_same_world(world):
  again = build.build_world(seed=3, scale=0.05, n_pretrain=2000)
  assert again == world
  other = build.build_world(seed=4, scale=0.05, n_pretrain=2000)
  assert other.prompts != world.prompts and other.pretrain != world.pretrain


def test_every_split_has_a_validation_twin(world):
  # Paper Table 6: SFT, RM and PPO each have a validation split (disjointness is tested below).
  assert set(world.prompts) == {'sft', 'rm', 'ppo', 'test', 'sft_valid', 'rm_valid', 'ppo_valid'}
  assert all(world.prompts[f'{s}_valid'] for s in ('sft', 'rm', 'ppo'))


def test_splits_are_customer_disjoint(world):
  customers = {s: {r['customer'] for r in rs} - {prompts.LABELER}
               for s, rs in world.prompts.items()}
  names = sorted(customers)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not customers[a] & customers[b], (a, b)
  assert all(r['customer'] != prompts.LABELER for s in ('ppo', 'test') for r in world.prompts[s])
  per_customer = collections.Counter(r['customer'] for rs in world.prompts.values() for r in rs
                                     if r['customer'] != prompts.LABELER)
  assert max(per_customer.values()) <= 200


def test_counts_follow_the_paper(world):
  got = {s: len(rs) for s, rs in world.prompts.items()}
  paper = {s: sum(c.values()) for s, c in prompts.PAPER_COUNTS.items()}
  for split, n in got.items():
    assert abs(n - 0.05 * paper[split]) <= 2, (split, n)
  sft_labeler = sum(r['customer'] == prompts.LABELER for r in world.prompts['sft'])
  assert abs(sft_labeler / got['sft'] - 11_295 / 12_725) < 0.01
  assert {s: len(d) for s, d in world.demonstrations.items()} == {
      'sft': got['sft'], 'rm': got['rm'], 'sft_valid': got['sft_valid']}


def test_customer_prompts_follow_table1(world):
  records = [r for s in ('rm', 'ppo') for r in world.prompts[s]
             if r['customer'] != prompts.LABELER]
  share = collections.Counter(r['category'] for r in records)
  total = sum(tasks.TABLE1_SHARES.values())
  for category, paper in tasks.TABLE1_SHARES.items():
    assert abs(share[category] / len(records) - paper / total) < 0.08, category


def test_records_match_design_formats(world):
  assert all(set(r) == {'text'} for r in world.pretrain)
  for records in world.prompts.values():
    assert all(set(r) == {'prompt', 'customer', 'category'} for r in records)
    assert all(tasks.parse(r['prompt'])[0].name == r['category'] for r in records)
  for demos in world.demonstrations.values():
    assert all(set(d) == {'prompt', 'completion'} and d['completion'] for d in demos)


def test_card(world):
  card = build.card(world)
  assert card['splits']['test']['prompts'] == len(world.prompts['test'])
  assert sum(card['splits']['rm']['categories'].values()) == len(world.prompts['rm'])
  assert 0.69 <= card['labeler_agreement_train'] <= 0.77
  assert card['labeler_agreement_heldout'] > card['labeler_agreement_train']
  assert card['splits']['sft']['demonstration_length']['max_words'] <= 32
