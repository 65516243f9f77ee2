"""InstructGPT-mini: the main job for several seeds, with PPO, PPO-ptx, SFT and the base models.

  python experiments/instructgpt_mini/run.py [--workdir runs/instructgpt_mini] [--seeds 0,1,2]
                                             [--ppo] [--large_base] [--large_policy]
                                             [--large_model n_layers=8,d_model=256,...]

For each seed, in <workdir>_seed<seed>, runs as a user would (`python -m rlhf_jax.main`, each
stage skipped when already complete; the seed reaches every stage, the world included):
  1. configs/ppo_ptx.py: world, pretrain, sft, sample, label, pretrain_rm, sft_rm, rm, sft_init,
     PPO-ptx (validation picks the iteration), eval;
  2. with --ppo, configs/ppo.py: PPO (gamma 0) from the same sft_init and reward model;
  3. with --large_base, configs/pretrain.py with a larger geometry (`--large_model`; by default
     8 layers, d_model 256) in <workdir>_seed<seed>_8x, on the same world and token budget,
     evaluated as `gpt_8x`;
  4. with --large_policy (implies --large_base), the policy's pipeline at that geometry in the
     same folder: sft, sft_init and PPO-ptx scored by the main job's reward model (the paper
     used one 6B RM for every policy size), then that folder's eval stage (its policies against
     its own SFT); in the main workdir they are evaluated as `sft_8x` and `ppo_ptx_8x`;
  5. configs/eval.py again when 2, 3 or 4 added a policy.
Then prints, per seed, the report's table, the reward model's accuracy by labeler pool and
prompt split, the best-of-n check and PPO-ptx's selection curve (README.md keeps the measured
ones), and writes <workdir>_seed<seed>/eval/ppo_curves.png.

Wall time on the 2-core CPU (2026-12-02), per seed: the main job 12 minutes with both cores;
then, pinned to one core beside another job (seeds 0 and 1), the 8x base model 12.5-13.4
minutes, its SFT 9.6, sft_init 1.4, PPO-ptx 14.6-14.9 and the two evals 3-4: under an hour a
seed with everything.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from rlhf_jax import config_lib, stages  # noqa: E402

# The 8x base model: twice the layers and twice the width of `tiny` (4 layers, d_model 128).
LARGE = 'n_layers=8,d_model=256,n_heads=8,d_ff=1024'
POLICIES = ('gpt', 'gpt_8x', 'gpt_prompted', 'sft', 'sft_8x', 'ppo', 'ppo_ptx', 'ppo_ptx_8x')
RM_SETS = ('valid_train', 'valid_heldout', 'test_train', 'test_heldout')


def main_job(config: str, workdir: pathlib.Path, seed: int, *overrides: str) -> None:
  command = [sys.executable, '-m', 'rlhf_jax.main', f'--config={config}', f'--workdir={workdir}',
             f'--config.seed={seed}', *overrides]
  print('$', ' '.join(command[1:]), flush=True)
  subprocess.run(command, check=True)


def summary(workdir: pathlib.Path, stage: str) -> dict:
  return json.loads((workdir / stage / 'summary.json').read_text())


def ppo_curves(workdir: pathlib.Path, out: pathlib.Path) -> None:
  """Training RM score and KL per iteration, and validation Likert at each validation."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
  for stage in ('ppo', 'ppo_ptx'):
    if not (workdir / stage / 'summary.json').exists():
      continue
    lines = (workdir / stage / 'metrics.jsonl').read_text().splitlines()
    rows = [json.loads(line) for line in lines if line]
    for ax, name in zip(axes, ('objective/scores', 'objective/kl')):
      ax.plot([r['step'] for r in rows], [r[name] for r in rows], label=stage)
      ax.set_title(name)
    curve = summary(workdir, stage).get('selection_curve', [])
    axes[2].plot([p['iteration'] for p in curve], [p['valid/likert'] for p in curve], 'o-',
                 label=stage)
    axes[2].set_title('validation Likert (training labelers)')
  for ax in axes:
    ax.set_xlabel('iteration')
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def headline(report: dict) -> str:
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


def rm_accuracy(rm: dict) -> str:
  """The RM's pairwise accuracy on each labeler pool's rankings (validation and test prompts)."""
  cells = ' | '.join(f'{rm.get(f"rm/{name}_accuracy", float("nan")):.3f}' for name in RM_SETS)
  return ('| ' + ' | '.join(RM_SETS) + ' |\n' + '|---' * len(RM_SETS) + '|\n| ' + cells + ' |')


def best_of_n(ppo: dict) -> str:
  rows = ['| n | KL | picked by | win rate vs SFT | Likert | RM score | gold |',
          '|---|---|---|---|---|---|---|']
  for pick_by, by_n in ppo.get('best_of_n', {}).items():
    for n, r in sorted(by_n.items(), key=lambda item: int(item[0])):
      rows.append(f'| {n} | {r["kl"]:.2f} | {pick_by} | {r["win_rate_vs_sft"]:.3f} | '
                  f'{r["likert"]:.2f} | {r["rm_score"]:.3f} | {r["gold"]:.3f} |')
  return '\n'.join(rows)


def selection(ppo: dict) -> str:
  rows = ['| iteration | Likert | win rate vs SFT | RM score | gold | KL | pretrain NLL |',
          '|---|---|---|---|---|---|---|']
  for p in ppo.get('selection_curve', []):
    mark = ' (selected)' if p['iteration'] == ppo['checkpoint_step'] else ''
    rows.append(f'| {p["iteration"]}{mark} | {p["valid/likert"]:.3f} | '
                f'{p["valid/win_rate_vs_sft"]:.3f} | {p["valid/rm_score"]:.3f} | '
                f'{p["valid/gold"]:.3f} | {p["valid/kl"]:.2f} | {p["valid/pretrain_loss"]:.4f} |')
  return '\n'.join(rows)


MAIN_JOB_STAGES = ('world', 'pretrain', 'sft', 'sample', 'label', 'pretrain_rm', 'sft_rm', 'rm',
                   'sft_init', 'ppo_ptx', 'eval')


def wall_times(workdir: pathlib.Path) -> str:
  """Each main-job stage's own wall time (summary.json 'seconds'; compilation included)."""
  seconds = {stage: stages.summary(str(workdir), stage).get('seconds', float('nan'))
             for stage in MAIN_JOB_STAGES}
  return ('| ' + ' | '.join(seconds) + ' | total |\n' + '|---' * (len(seconds) + 1) + '|\n| '
          + ' | '.join(f'{s:.0f}' for s in seconds.values())
          + f' | {sum(seconds.values()):.0f} |')


def model_overrides(fields: str, model) -> tuple[str, ...]:
  """'n_layers=8,d_model=256' -> the main job's --config.model.* flags setting those fields of
  `model` (a stage config's model ConfigDict, which names the fields there are)."""
  pairs = [field.split('=') for field in fields.split(',')]
  if any(len(pair) != 2 or not all(pair) for pair in pairs):
    raise SystemExit(f'--large_model={fields}: expected FIELD=VALUE pairs separated by commas')
  unknown = [field for field, _ in pairs if field not in model]
  if unknown:
    raise SystemExit(f'--large_model={fields}: the model config has no field {unknown[0]}')
  return tuple(f'--config.model.{field}={value}' for field, value in pairs)


def large_pipeline(configs: str, workdir: pathlib.Path, seed: int, policy: bool,
                   large_args: tuple[str, ...]) -> list[str]:
  """The 8x base model (the geometry `large_args` set), and with `policy` its SFT, sft_init and
  PPO-ptx scored by `workdir`'s reward model and evaluated against that SFT, in <workdir>_8x;
  returns their `extra_policies` entries for the main workdir's eval stage."""
  large = workdir.with_name(workdir.name + '_8x')
  reuse = f'--reuse_from={workdir}'  # the world's data, not remade
  main_job(f'{configs}/pretrain.py', large, seed, reuse, *large_args)
  extra = [f'gpt_8x={large / "pretrain"}']
  if policy:
    # Stage by stage, the eval too: a dependency or follow-up the CLI ran by itself would get its
    # config's geometry.
    for stage in ('sft', 'sft_init'):
      main_job(f'{configs}/{stage}.py', large, seed, *large_args)
    main_job(f'{configs}/ppo_ptx.py', large, seed, *large_args,
             f'--config.reward_from={(workdir / "rm").resolve()}', '--config.then=()')
    main_job(f'{configs}/eval.py', large, seed, *large_args)
    extra += [f'sft_8x={large / "sft"}', f'ppo_ptx_8x={large / "ppo_ptx"}']
  return extra


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/instructgpt_mini')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--ppo', action='store_true', help='also PPO without the ptx term')
  parser.add_argument('--large_base', action='store_true', help='also an 8x base model')
  parser.add_argument('--large_policy', action='store_true',
                      help='also SFT and PPO-ptx at the 8x geometry with the same reward model')
  parser.add_argument('--large_model', default=LARGE,
                      help='the larger geometry, as FIELD=VALUE pairs of the model config')
  parser.add_argument('--configs', default='configs', help='the folder of the stage configs')
  args = parser.parse_args()
  # A typo stops the run before any stage.
  large_args = model_overrides(args.large_model,
                               config_lib.load_config(f'{args.configs}/pretrain.py').model)
  base = pathlib.Path(args.workdir)
  for seed in (int(s) for s in args.seeds.split(',')):
    workdir = base.with_name(f'{base.name}_seed{seed}')
    main_job(f'{args.configs}/ppo_ptx.py', workdir, seed)
    extra = []
    if args.ppo:
      main_job(f'{args.configs}/ppo.py', workdir, seed)
    if args.large_base or args.large_policy:
      extra = large_pipeline(args.configs, workdir, seed, args.large_policy, large_args)
    if args.ppo or extra:
      main_job(f'{args.configs}/eval.py', workdir, seed,
               f'--config.extra_policies={",".join(extra)}', '--force')
    ppo_curves(workdir, workdir / 'eval' / 'ppo_curves.png')
    report = json.loads((workdir / 'eval' / 'report.json').read_text())
    ppo = summary(workdir, 'ppo_ptx')
    print(f'\n## Seed {seed}\n\n{headline(report)}\n\nReward model accuracy:\n\n'
          f'{rm_accuracy(summary(workdir, "rm"))}\n\nBest-of-n of SFT (validation):\n\n'
          f'{best_of_n(ppo)}\n\nPPO-ptx selection curve (validation, EMA policy):\n\n'
          f'{selection(ppo)}\n\nWall time per stage (s):\n\n{wall_times(workdir)}\n\n'
          f'curves: {workdir / "eval" / "ppo_curves.png"}', flush=True)
    if args.large_policy:
      large = workdir.with_name(workdir.name + '_8x')
      report = json.loads((large / 'eval' / 'report.json').read_text())
      print(f'\n8x pipeline, against its own SFT:\n\n{headline(report)}\n\n'
            f'8x PPO-ptx selection curve (validation, against the 8x SFT):\n\n'
            f'{selection(summary(large, "ppo_ptx"))}', flush=True)


if __name__ == '__main__':
  main()
