"""InstructGPT-mini: PPO vs PPO-ptx vs SFT vs the base models, and a base model ~8x larger.

  python experiments/instructgpt_mini/run.py [--workdir runs/instructgpt_mini] [--seed 0]

Runs, as a user would (`python -m rlhf_jax.main`, each stage skipped when already complete):
  1. configs/ppo_ptx.py: world, pretrain, sft, sample, label, rm, sft_init, PPO-ptx (gamma 27.8);
  2. configs/ppo.py: PPO (gamma 0) from the same sft_init and reward model;
  3. configs/pretrain.py with a larger geometry (8 layers, d_model 256: 6.5M parameters against
     the tiny preset's 0.89M) in <workdir>_8x, on the same world and the same token budget;
  4. configs/eval.py: every policy judged by the held-out labelers against SFT, the 8x base
     model included as `gpt_8x`.
Then prints the report as markdown tables (README.md keeps the measured ones) and writes
`<workdir>/eval/ppo_curves.png` (RM score and KL per iteration of PPO and PPO-ptx).
"""
import argparse
import json
import pathlib
import subprocess
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

# The 8x base model: twice the layers and twice the width of `tiny` (4 layers, d_model 128).
LARGE = {'n_layers': 8, 'd_model': 256, 'n_heads': 8, 'd_ff': 1024}
POLICIES = ('gpt', 'gpt_8x', 'gpt_prompted', 'sft', 'ppo', 'ppo_ptx')


def main_job(config: str, workdir: pathlib.Path, seed: int, *overrides: str) -> None:
  command = [sys.executable, '-m', 'rlhf_jax.main', f'--config={config}', f'--workdir={workdir}',
             f'--config.seed={seed}', *overrides]
  print('$', ' '.join(command[1:]), flush=True)
  subprocess.run(command, check=True)


def ppo_curves(workdir: pathlib.Path, out: pathlib.Path) -> None:
  """RM score and KL to sft_init per iteration, PPO against PPO-ptx."""
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
  for stage in ('ppo', 'ppo_ptx'):
    lines = (workdir / stage / 'metrics.jsonl').read_text().splitlines()
    rows = [json.loads(line) for line in lines if line]
    steps = [r['step'] for r in rows]
    for ax, name in zip(axes, ('objective/scores', 'objective/kl')):
      ax.plot(steps, [r[name] for r in rows], label=stage)
      ax.set_title(name)
      ax.set_xlabel('iteration')
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def tables(report: dict) -> str:
  policies = [p for p in POLICIES if p in report['policies']]
  rows = ['| policy | win rate vs SFT [95% CI] | Likert | fails instruction | hallucination '
          '| inappropriate | constraint satisfied | pretrain loss |', '|---' * 8 + '|']
  for name in policies:
    p = report['policies'][name]
    lo, hi = p['win_rate_ci']
    rate = lambda x: '-' if x is None else f'{x:.3f}'
    rows.append(f'| {name} | {p["win_rate_vs_sft"]:.3f} [{lo:.3f}, {hi:.3f}] | {p["likert"]:.2f} '
                f'| {rate(p["fails_instruction_rate"])} | {rate(p["hallucination_rate"])} '
                f'| {rate(p["inappropriate_rate"])} | {rate(p["constraint_satisfied_rate"])} '
                f'| {p["pretrain_loss"]:.4f} |')
  tasks = sorted(report['policies']['sft']['public_evals'])
  rows += ['', '| policy | ' + ' | '.join(tasks) + ' |', '|---' * (len(tasks) + 1) + '|']
  for name in policies:
    evals = report['policies'][name]['public_evals']
    rows.append(f'| {name} | ' + ' | '.join(f'{evals[t]:.3f}' for t in tasks) + ' |')
  return '\n'.join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/instructgpt_mini')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  large = workdir.with_name(workdir.name + '_8x')
  main_job('configs/ppo_ptx.py', workdir, args.seed, '--config.then=()')
  main_job('configs/ppo.py', workdir, args.seed)
  main_job('configs/pretrain.py', large, args.seed,
           *(f'--config.model.{field}={value}' for field, value in LARGE.items()))
  main_job('configs/eval.py', workdir, args.seed,
           f'--config.extra_policies=gpt_8x={large / "pretrain"}', '--force')
  ppo_curves(workdir, workdir / 'eval' / 'ppo_curves.png')
  report = json.loads((workdir / 'eval' / 'report.json').read_text())
  print(tables(report))
  print(f'\ncurves: {workdir / "eval" / "ppo_curves.png"}')


if __name__ == '__main__':
  main()
