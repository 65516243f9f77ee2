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
"""
import argparse
import json
import pathlib
import subprocess
import sys

# "Removed": within two standard errors of the validation-text NLL (4 batches of 64 x 128
# tokens give about +-0.005 nats).
TOLERANCE = 0.01


def run_gamma(workdir: pathlib.Path, out: pathlib.Path, gamma: float, seed: int) -> dict:
  """PPO-ptx at `gamma` from workdir's inputs (linked, never modified); its summary."""
  command = [sys.executable, '-m', 'rlhf_jax.main', '--config=configs/ppo_ptx.py',
             f'--workdir={out}', f'--reuse_from={workdir}', f'--config.seed={seed}',
             f'--config.ptx_coef={gamma}',
             # The best-of-n check depends on SFT and the RM only: the main job has it.
             '--config.best_of_n=0', '--config.then=()']
  print('$', ' '.join(command[1:]), flush=True)
  subprocess.run(command, check=True)
  return json.loads((out / 'ppo_ptx' / 'summary.json').read_text())


def point(summary: dict) -> dict:
  """The final iteration's validation reward and pretraining regression."""
  start, final = summary['selection_curve'][0], summary['selection_curve'][-1]
  return {'iteration': final['iteration'], 'valid_reward': final['valid/rm_score'],
          'likert': final['valid/likert'], 'gold': final['valid/gold'], 'kl': final['valid/kl'],
          'regression': final['valid/pretrain_loss'] - start['valid/pretrain_loss']}


def choose(points: dict[float, dict], tolerance: float = TOLERANCE) -> float | None:
  """App. E.6: of the gammas whose regression is removed, the one of highest validation reward
  (None when no gamma removes it)."""
  ok = {g: p for g, p in points.items() if p['regression'] <= tolerance}
  return max(ok, key=lambda g: ok[g]['valid_reward']) if ok else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--gammas', default='0,1,3,10,27.8')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  points = {}
  for gamma in (float(g) for g in args.gammas.split(',')):
    out = workdir.with_name(f'{workdir.name}_gamma') / f'{gamma:g}'
    points[gamma] = point(run_gamma(workdir, out, gamma, args.seed))
  print('| gamma | iteration | validation reward | Likert | gold | KL | pretraining regression |')
  print('|---|---|---|---|---|---|---|')
  for gamma, p in points.items():
    print(f'| {gamma:g} | {p["iteration"]} | {p["valid_reward"]:.3f} | {p["likert"]:.2f} | '
          f'{p["gold"]:.3f} | {p["kl"]:.2f} | {p["regression"]:+.4f} |')
  print(f'\nchosen gamma (App. E.6 rule, tolerance {TOLERANCE}): {choose(points)}')


if __name__ == '__main__':
  main()
