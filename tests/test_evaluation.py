"""Evaluation math and reporting: Wilson intervals, ties, metadata rates, accuracy, report files."""
import math
import os
import random

import pytest

from rlhf_jax import evaluation
from rlhf_jax.world import labelers, tasks


def test_wilson_interval_matches_hand_computed_values():
  # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half-width
  # 1.96 * sqrt(0.016 + 0.009604) / 1.38416.
  lo, hi = evaluation.wilson_interval(8, 10)
  assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
  # No successes: the lower end is 0 and the upper end z^2/n / (1 + z^2/n).
  lo, hi = evaluation.wilson_interval(0, 10)
  assert lo == 0.0 and hi == pytest.approx(0.38415 / 1.38415, abs=1e-4)
  assert evaluation.wilson_interval(0, 0) == (0.0, 1.0)
  for n in range(1, 60):  # exactly, whatever the rounding of centre -+ half-width
    assert evaluation.wilson_interval(0, n)[0] == 0.0
    assert evaluation.wilson_interval(n, n)[1] == 1.0


def test_ties_count_half_a_win():
  assert [evaluation.pair_outcome(r) for r in ([0, 1], [0, 0], [1, 0])] == [1.0, 0.5, 0.0]
  rate, (lo, hi) = evaluation.win_rate([1.0, 0.5, 0.5, 0.0])
  assert rate == 0.5
  assert (lo, hi) == evaluation.wilson_interval(2.0, 4)
  assert 0.5 - lo == pytest.approx(hi - 0.5)  # symmetric at one half
  rate, (lo, hi) = evaluation.win_rate([0.5] * 50)
  assert rate == 0.5 and lo < 0.5 < hi


def test_identical_responses_tie_for_every_labeler():
  rng = random.Random(0)
  prompts = [tasks.sample_prompt(c, rng) for c in tasks.FAMILIES for _ in range(3)]
  responses = [tasks.demonstrate(p, rng) for p in prompts]
  judges = evaluation.assign_labelers(labelers.make_pool(0, heldout=True), len(prompts), seed=0)
  judged = evaluation.judge_responses(judges, prompts, responses, responses)
  assert judged['outcomes'] == [0.5] * len(prompts)
  assert all(1 <= s <= 7 for s in judged['likerts'])
  assert judges == evaluation.assign_labelers(labelers.make_pool(0, heldout=True), len(prompts),
                                              seed=0)


def test_metadata_rates_use_the_right_denominators():
  closed, open_ = tasks.CLOSED_DOMAIN[0], 'generation'
  flags = lambda fails, halluc, constraint, bad: {
      'fails_instruction': fails, 'hallucination': halluc, 'satisfies_constraint': constraint,
      'inappropriate': bad}
  metadata = [flags(True, True, None, False), flags(False, True, True, False),
              flags(False, False, False, True), flags(False, True, None, False)]
  rates = evaluation.metadata_rates(metadata, [closed, closed, open_, open_])
  assert rates['fails_instruction_rate'] == 0.25
  assert rates['hallucination_rate'] == 1.0  # open-domain hallucination flags are not counted
  assert rates['n_closed_domain'] == 2
  assert rates['constraint_satisfied_rate'] == 0.5 and rates['n_constrained'] == 2
  assert rates['inappropriate_rate'] == 0.25
  assert evaluation.metadata_rates(metadata[2:], [open_, open_])['hallucination_rate'] is None


def test_choice_accuracy_picks_the_highest_average_logprob():
  scores = [[-1.0, -0.5, -2.0], [-0.1, -3.0], [-4.0, -1.0, -2.0, -3.0]]
  assert evaluation.choice_accuracy(scores, [1, 0, 0]) == pytest.approx(2 / 3)


def _report(names):
  policies = {}
  for i, name in enumerate(names):
    judged = {'outcomes': [1.0, 0.5, 0.0][i % 3:] + [0.5], 'likerts': [4, 5],
              'metadata': [{'fails_instruction': False, 'hallucination': bool(i % 2),
                            'satisfies_constraint': None, 'inappropriate': False}] * 2}
    policies[name] = evaluation.policy_entry(judged, ['closed_qa', 'generation'], 3.0 + i,
                                             {'cloze_home': 0.25 * i, 'sentiment': 0.5})
  return {'policies': policies, 'baseline': 'sft', 'n_prompts': 2, 'temperature': 1.0,
          'labelers': 40, 'examples': [{'prompt': 'what does the fox eat?', 'category': 'open_qa',
                                        'responses': {n: f'{n} says meat.' for n in names}}]}


def test_report_renders_every_policy_and_writes_plots(tmp_path):
  names = ['gpt', 'gpt_prompted', 'sft', 'ppo_ptx']
  report = _report(names)
  entry = report['policies']['sft']
  for key in ('win_rate_vs_sft', 'win_rate_ci', 'likert', 'hallucination_rate',
              'fails_instruction_rate', 'inappropriate_rate', 'pretrain_loss', 'public_evals'):
    assert key in entry
  markdown = evaluation.render_markdown(report)
  for name in names:
    assert f'| {name} |' in markdown and f'{name} says meat.' in markdown
  assert 'constraint ok ↑' in markdown and '| - |' in markdown  # no constrained prompt: a dash
  paths = evaluation.write_plots(report, str(tmp_path))
  assert len(paths) == 3 and '![training_curves]' not in markdown  # no curves in this report
  report['training_curves'] = {'sft': {'sft/loss': [[1, 2.0], [2, 1.5]]},
                               'rm': {'rm/loss': [[1, 0.7]], 'rm/accuracy': [[1, 0.6]]}}
  report['stage_seconds'] = {'world': 6.0, 'pretrain': 90.0}
  markdown = evaluation.render_markdown(report)
  assert '![training_curves](training_curves.png)' in markdown
  assert 'wall time (minutes): world 0.1, pretrain 1.5; 1.6 in all before the evaluation' in markdown
  paths = evaluation.write_plots(report, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == list(evaluation.PLOTS)
  for path in paths:
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert not math.isnan(entry['win_rate_ci'][0])


def _entry(rate, ci, hallucination=0.3, pretrain_loss=1.0):
  return {'win_rate_vs_sft': rate, 'win_rate_ci': ci, 'hallucination_rate': hallucination,
          'pretrain_loss': pretrain_loss}


def test_paper_comparison_says_what_holds_and_points_to_the_readme_when_not():
  won = {'gpt': _entry(0.30, [0.2, 0.4], hallucination=0.4),
         'gpt_prompted': _entry(0.40, [0.3, 0.5]), 'sft': _entry(0.5, [0.4, 0.6]),
         'ppo': _entry(0.60, [0.52, 0.68], pretrain_loss=1.3),
         'ppo_ptx': _entry(0.62, [0.55, 0.69], hallucination=0.2, pretrain_loss=1.1)}
  lines = evaluation.paper_comparison({'policies': won})
  assert lines[0].startswith('Reproduced: labelers prefer PPO-ptx to SFT')
  assert 'gpt < gpt_prompted < sft < ppo_ptx' in lines[1] and 'holds' in lines[1]
  assert 'hallucinates less' in lines[2] and 'lowers' in lines[3]
  assert len(lines) == 4  # everything held: no pointer

  lost = dict(won, ppo_ptx=_entry(0.41, [0.34, 0.49], hallucination=0.5, pretrain_loss=1.4))
  lines = evaluation.paper_comparison({'policies': lost})
  assert lines[0].startswith('Not reproduced: labelers prefer SFT to PPO-ptx')
  assert 'does not hold' in lines[1] and lines[1].endswith('sft 0.500 >= ppo_ptx 0.410.')
  assert 'hallucinates more than GPT' in lines[2] and 'does not lower' in lines[3]
  assert lines[-1].endswith(evaluation.EXPERIMENTS_README + '.')

  tied = {'sft': won['sft'], 'ppo_ptx': _entry(0.52, [0.45, 0.59])}
  lines = evaluation.paper_comparison({'policies': tied})
  assert lines[0].startswith('Not shown:') and len(lines) == 3  # the order of two holds
  assert evaluation.paper_comparison({'policies': {'sft': won['sft']}}) == []
