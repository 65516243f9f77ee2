"""One PPO-ptx hyperparameter swept on validation data: the KL coefficient beta (App. E.7) or
the pretraining-mix coefficient gamma (App. E.6, Fig. 33-34).

  python experiments/instructgpt_mini/sweep.py --field kl_coef --values 0,0.01,0.02,0.1,2
  python experiments/instructgpt_mini/sweep.py --field ptx_coef --values 0,1,3,10,27.8
      [--workdir runs/mini] [--seed 0] [--config configs/ppo_ptx.py] [--set config.FIELD=VALUE]

From one workdir's sft_init, rm and sft (run the main job first; they are linked, never
modified), PPO-ptx is trained once per value in <workdir>_<beta|gamma>/<value>; a value whose
run is complete is read back, an interrupted one resumes, and the workdir's own PPO-ptx stage is
the point at its own value. For each run the table gives, on the PPO validation prompts, the
final iteration (the paper compared values after a fixed number of episodes) and the one that
validation selection keeps: the validation reward (mean RM score), the gold score (what the RM
stands in for), the training labelers' Likert score and win rate against SFT, the KL to
sft_init, and the change of the NLL on the world's validation text against sft_init's at
iteration 0 (the pretraining-distribution regression that gamma exists to remove). Nothing here
reads the test prompts, the held-out labelers or the eval stage.

Paper: beta 0.01-0.02 best, 0 and 2 poor (E.7); gamma removes the regressions on public NLP
data at a small cost in validation reward (E.6), 27.8 at 1.3B.

Wall time on the 2-core CPU (2026-12-02, two values at once, one per core): 16-17 minutes per
value at the main job's settings, after the main job.
"""
import argparse
import json
import pathlib
import subprocess
import sys

NAMES = {'kl_coef': 'beta', 'ptx_coef': 'gamma'}
COLUMNS = (('valid/rm_score', 'reward', '.3f'), ('valid/gold', 'gold', '.3f'),
           ('valid/likert', 'Likert', '.2f'), ('valid/win_rate_vs_sft', 'win vs SFT', '.3f'),
           ('valid/kl', 'KL', '.2f'))


def run_dir(workdir: pathlib.Path, field: str, value: float) -> pathlib.Path:
  """<workdir>_<beta|gamma>/<value>: where the run at `value` lives."""
  return workdir.with_name(f'{workdir.name}_{NAMES[field]}') / f'{value:g}'


def run(workdir: pathlib.Path, field: str, value: float, seed: int,
        config: str = 'configs/ppo_ptx.py', overrides: tuple[str, ...] = ()) -> dict:
  """PPO-ptx (`config`) at field=value from workdir's inputs; its stage summary. The workdir's
  own complete PPO-ptx stage is the point at its value and seed (the main job's, usually)."""
  own = workdir / 'ppo_ptx'
  if (own / 'summary.json').exists() and (own / 'provenance.json').exists():
    recorded = json.loads((own / 'provenance.json').read_text())['config']
    if recorded[field] == value and recorded['seed'] == seed and not overrides:
      print(f'{field}={value:g}: the PPO-ptx stage of {workdir}', flush=True)
      return json.loads((own / 'summary.json').read_text())
  out = run_dir(workdir, field, value)
  command = [sys.executable, '-m', 'rlhf_jax.main', f'--config={config}',
             f'--workdir={out}', f'--reuse_from={workdir}', f'--config.seed={seed}',
             f'--config.{field}={value}',
             # The best-of-n check depends on SFT and the RM only: the main job has it.
             '--config.best_of_n=0', '--config.then=()', *(f'--{o}' for o in overrides)]
  print('$', ' '.join(command[1:]), flush=True)
  subprocess.run(command, check=True)
  return json.loads((out / 'ppo_ptx' / 'summary.json').read_text())


def point(summary: dict) -> dict:
  """{'final': figures, 'selected': figures} of a run's validation curve: each iteration's
  COLUMNS and its pretraining regression (validation-text NLL minus iteration 0's)."""
  curve = summary['selection_curve']

  def figures(p: dict) -> dict:
    return {'iteration': p['iteration'],
            'regression': p['valid/pretrain_loss'] - curve[0]['valid/pretrain_loss'],
            **{key: p[key] for key, _, _ in COLUMNS if key in p}}

  selected = next((p for p in curve if p['iteration'] == summary.get('checkpoint_step')), curve[-1])
  return {'final': figures(curve[-1]), 'selected': figures(selected)}


def table(field: str, points: dict[float, dict]) -> str:
  """A markdown table: one row per value, its final and its selected iteration."""
  head = [NAMES[field], 'iteration', *(name for _, name, _ in COLUMNS), 'pretraining regression']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for value, p in points.items():
    for label, figures in p.items():
      cells = [f'{value:g}', f'{figures["iteration"]} ({label})',
               *(format(figures[key], fmt) if key in figures else '-' for key, _, fmt in COLUMNS),
               f'{figures["regression"]:+.4f}']
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--field', choices=sorted(NAMES), required=True)
  parser.add_argument('--values', required=True, help='comma-separated')
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--config', default='configs/ppo_ptx.py', help='the PPO-ptx config file')
  parser.add_argument('--set', action='append', default=[], metavar='config.FIELD=VALUE',
                      help='another override for every run (e.g. a shorter run for a smoke test)')
  return parser.parse_args(argv)


def sweep(args: argparse.Namespace) -> dict[float, dict]:
  """{value: point} of every value, run in order."""
  workdir = pathlib.Path(args.workdir)
  return {value: point(run(workdir, args.field, value, args.seed, args.config, tuple(args.set)))
          for value in (float(v) for v in args.values.split(','))}


def main():
  args = parse_args()
  print(table(args.field, sweep(args)))


if __name__ == '__main__':
  main()
