"""The App. E.6 rule of experiments/instructgpt_mini/gamma.py, on constructed runs."""
import pathlib
import sys

import pytest

# The experiment's scripts import each other as a script's folder does.
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'experiments' / 'instructgpt_mini'))
import gamma  # noqa: E402


def _summary(final_reward: float, final_nll: float, selected: int = 0) -> dict:
  def p(iteration, reward, nll):
    return {'iteration': iteration, 'valid/rm_score': reward, 'valid/likert': 4.0,
            'valid/gold': 0.5, 'valid/kl': float(iteration), 'valid/pretrain_loss': nll}
  return {'checkpoint_step': selected,
          'selection_curve': [p(0, 0.0, 1.10), p(8, 0.5, 1.2), p(16, final_reward, final_nll)]}


def test_point_reads_the_final_iteration_against_iteration_0():
  point = gamma.point(_summary(0.7, 1.13))
  assert point['final']['iteration'] == 16 and point['final']['valid/rm_score'] == 0.7
  assert point['final']['regression'] == pytest.approx(0.03)


def test_choose_takes_the_best_reward_among_gammas_without_regression():
  points = {0.0: gamma.point(_summary(0.9, 1.20)),   # best reward, but regresses
            1.0: gamma.point(_summary(0.6, 1.105)),  # within tolerance
            10.0: gamma.point(_summary(0.4, 1.05)),  # improves the NLL, lower reward
            27.8: gamma.point(_summary(0.1, 1.00))}
  assert gamma.choose(points) == 1.0
  assert gamma.choose(points, tolerance=0.2) == 0.0
  assert gamma.choose({0.0: points[0.0]}) is None
