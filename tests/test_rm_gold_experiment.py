"""experiments/instructgpt_mini/rm_gold.py at the tiny size: a reward model's accuracy against
the world's gold order, from the sample stage's validation completions."""
import subprocess
import sys

from stage_fixtures import REPO, copy_workdir, stage_config

from rlhf_jax import stages


def test_rm_accuracy_against_the_gold_order_is_printed_by_pair_kind(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'w')
  stages.run(stage_config('rm', workdir, total_steps=1, eval_every=0))
  result = subprocess.run(
      [sys.executable, 'experiments/instructgpt_mini/rm_gold.py', f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split(' | ') for line in result.stdout.splitlines() if line.startswith('| ')]
  pairs = [r for r in rows[2:] if len(r) == 3]
  assert pairs and all(0.0 <= float(r[2].rstrip(' |')) <= 1.0 for r in pairs)
  assert 'best-of-K among SFT completions' in result.stdout
