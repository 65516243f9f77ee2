"""Reward-model over-optimisation in the mini world (Gao et al. 2022, Fig. 1), from PPO stages.

  python experiments/overoptimisation/run.py --runs NAME=PPO_STAGE_DIR[,NAME=DIR...] [--out DIR]

Each PPO stage folder run with validation holds both curves this needs, measured on the PPO
validation prompts: its best-of-n check of SFT (`best_of_n.json`, the RM's pick among n
samples; KL = log n - (n - 1) / n; run with `--config.best_of_n=64` for n up to 64) and its
selection curve (the EMA policy every `eval_every` iterations, with its sampled KL to
sft_init). At each point the proxy reward is the RM's score and the gold reward the world's
noise-free mean labeler utility (`valid/gold`). Gains are taken against n = 1 and iteration 0,
and fitted with fit.py's forms: R_bon = d (alpha - beta d) and R_RL = d (alpha - beta ln d),
d = sqrt(KL). Prints a table of alpha, beta and the gold peak d* per run, and plots gold and
proxy against d (<out>/overoptimisation.png).

Wall time on the 2-core CPU (2026-12-02): about a second per run (it reads the folders' records).
"""
import argparse
import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fit as fit_lib  # noqa: E402  (this folder's module)


def bon_points(stage_dir: pathlib.Path) -> dict[str, np.ndarray] | None:
  """d, gold gain and proxy gain of the RM's best-of-n picks; None without a check on record."""
  path = stage_dir / 'best_of_n.json'
  if not path.exists():
    return None
  by_n = json.loads(path.read_text()).get('rm')
  if not by_n:
    return None
  rows = sorted(by_n.values(), key=lambda r: r['kl'])
  return {'d': np.sqrt([r['kl'] for r in rows]),
          'gold': np.array([r['gold'] - rows[0]['gold'] for r in rows]),
          'proxy': np.array([r['rm_score'] - rows[0]['rm_score'] for r in rows])}


def rl_points(stage_dir: pathlib.Path) -> dict[str, np.ndarray] | None:
  """d, gold gain and proxy gain along the run's validation curve; None without one."""
  summary = json.loads((stage_dir / 'summary.json').read_text())
  curve = summary.get('selection_curve')
  if not curve:
    return None
  # A sampled KL estimate can come out a hair below zero at the start.
  kl = np.maximum([p['valid/kl'] for p in curve], 0.0)
  return {'d': np.sqrt(kl),
          'gold': np.array([p['valid/gold'] - curve[0]['valid/gold'] for p in curve]),
          'proxy': np.array([p['valid/rm_score'] - curve[0]['valid/rm_score'] for p in curve])}


def report(runs: dict[str, str], out: pathlib.Path) -> list[dict]:
  """Prints the fits' table for the PPO stage folders `runs` (name -> folder) and plots their
  points and curves into out/overoptimisation.png; the table's rows as dicts."""
  print('| run | method | reward | alpha | beta | gold peak d* | points |\n' + '|---' * 7 + '|')
  rows = []
  # Gold (utility, about 0..1) and proxy (RM logits) have different scales: one row each.
  fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex='col')
  for name, folder in runs.items():
    stage_dir = pathlib.Path(folder)
    for col, form, points in ((0, 'bon', bon_points(stage_dir)), (1, 'rl', rl_points(stage_dir))):
      if points is None or np.count_nonzero(points['d']) < 2:
        continue  # no such curve in this run, or too short to fit
      for row, reward in enumerate(('gold', 'proxy')):
        curve = fit_lib.fit(form, points['d'], points[reward])
        peak = curve.peak if reward == 'gold' else None
        print(f'| {name} | {form} | {reward} | {curve.alpha:.4f} | {curve.beta:.4f} | '
              f'{"-" if peak is None else f"{peak:.2f}"} | {len(points["d"])} |')
        rows.append({'run': name, 'form': form, 'reward': reward, 'alpha': curve.alpha,
                     'beta': curve.beta, 'peak': peak, 'points': len(points['d'])})
        ax = axes[row][col]
        line, = ax.plot(points['d'], points[reward], 'o', label=name)
        grid = np.linspace(0, points['d'].max(), 100)
        ax.plot(grid, curve(grid), '-', color=line.get_color())
  for col, title in enumerate(('best-of-n of SFT (RM picks)', 'PPO (EMA policy)')):
    axes[0][col].set_title(title)
    axes[1][col].set_xlabel('d = sqrt(KL) (nats^0.5)')
  for row, label in enumerate(('gold gain (mean labeler utility)', 'proxy gain (RM score)')):
    axes[row][0].set_ylabel(label)
    for ax in axes[row]:
      ax.axhline(0, color='grey', linewidth=0.5)
      if ax.lines:
        ax.legend(fontsize=8)
  path = out / 'overoptimisation.png'
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f'\nplot: {path}')
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', required=True, help='NAME=PPO_STAGE_DIR, comma-separated')
  parser.add_argument('--out', default='.')
  args = parser.parse_args()
  report(dict(item.split('=', 1) for item in args.runs.split(',')), pathlib.Path(args.out))


if __name__ == '__main__':
  main()
