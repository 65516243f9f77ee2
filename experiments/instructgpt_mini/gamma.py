"""gamma for PPO-ptx by the paper's own rule (App. E.6), applied on validation data.

  python experiments/instructgpt_mini/gamma.py [--workdir runs/mini] [--gammas 0,1,3,10,27.8]

The paper chose gamma = 27.8 as the value that removes PPO's regressions on the public NLP
evals "with minimal reductions in validation reward". Here, from one workdir's sft_init, rm and
sft (run the main job first), PPO-ptx is trained once per gamma in <workdir>_gamma/<gamma>. For
each run the script reads, at its final iteration (the paper compared gammas at the end of a
fixed number of episodes; the iteration that selection keeps can be iteration 0 for every
gamma), the validation reward (mean RM score on the PPO validation prompts) and the regression
on the pretraining distribution (NLL of the world's validation text, against sft_init's at
iteration 0). The rule picks, among the gammas whose regression is at most
TOLERANCE, the one of highest validation reward. Nothing here reads the test prompts, the
held-out labelers or the eval stage.

Wall time on the 2-core CPU (2026-12-02, one core, beside one other job): about 5 minutes per
gamma at the main job's settings, after the main job.
"""
import argparse

import sweep  # this folder's module

# "Removed": within two standard errors of the validation-text NLL (4 batches of 64 x 128
# tokens give about +-0.005 nats).
TOLERANCE = 0.01
point = sweep.point


def choose(points: dict[float, dict], tolerance: float = TOLERANCE) -> float | None:
  """App. E.6: of the gammas whose regression is removed, the one of highest validation reward
  (None when no gamma removes it)."""
  final = {g: p['final'] for g, p in points.items()}
  ok = {g: p for g, p in final.items() if p['regression'] <= tolerance}
  return max(ok, key=lambda g: ok[g]['valid/rm_score']) if ok else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--gammas', default='0,1,3,10,27.8')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  points = sweep.sweep(sweep.parse_args(['--field=ptx_coef', f'--values={args.gammas}',
                                         f'--workdir={args.workdir}', f'--seed={args.seed}']))
  print(sweep.table('ptx_coef', points))
  print(f'\nchosen gamma (App. E.6 rule, tolerance {TOLERANCE}): {choose(points)}')


if __name__ == '__main__':
  main()
