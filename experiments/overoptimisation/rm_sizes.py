"""Over-optimisation against reward models of several sizes and two amounts of comparison data
(Gao et al. 2022, Fig. 1-2 and their RM-size trend; issue 19, item 1).

  python experiments/overoptimisation/rm_sizes.py [--workdir runs/mini]
      [--trunks NAME=FOLDER,...] [--fractions 1,0.5] [--best_of_n 64]
      [--ppo_config configs/ppo.py] [--seed 0] [--set config.FIELD=VALUE ...]

From a complete main job in --workdir (its world, rankings, SFT policy and sft_init), for each
trunk and each fraction of the training rankings, in <workdir>_rm_sizes/<name>_<fraction>:
  1. a reward model (configs/rm.py) started from the trunk, at the trunk's own geometry, on the
     first `fraction` of the shuffled rankings (one pass: `total_steps` scaled by the fraction);
  2. PPO without the ptx term (`--ppo_config`) from the workdir's sft_init against that RM, with
     its best-of-n check of SFT up to n = `--best_of_n` and validation every 8 iterations.
Then overoptimisation/run.py's fits for every run (best-of-n and RL, gold and proxy), with the
RM's parameter count in each run's name, and the plot in <workdir>_rm_sizes.

A trunk is a complete LM stage folder: an SFT model is used as it is; a base model (a pretrain
stage) is first fine-tuned on the demonstrations by configs/sft_rm.py in
<workdir>_rm_sizes/sft_<name>, as the main job's RM trunk is. The default trunks are the main
job's policy SFT model (`policy`, the policy's size) and its RM's SFT model (`tiny-rm`, 3.8x);
add a larger one with e.g. `large=<a pretrain stage at 8 layers>` (run.py --large_base of
experiments/instructgpt_mini trains one). Nothing is chosen from the numbers.

Wall time on the 2-core CPU (2026-12-02): about 45 minutes for the three trunks of the README
(the 8-layer trunk's SFT included), two fractions each. Measured table: overoptimisation/README.md.
"""
import argparse
import functools
import json
import pathlib
import subprocess
import sys

import jax
import ml_collections

import run as overoptimisation  # this folder's module
from rlhf_jax import atomic, checkpoint, config_lib, state
from rlhf_jax.data import records
from rlhf_jax.stages import label as label_stage
from rlhf_jax.stages import layout

# The model fields a run's overrides set, so every stage builds the trunk's geometry.
MODEL_FIELDS = ('n_layers', 'd_model', 'n_heads', 'd_head', 'd_ff', 'vocab_size', 'max_len')
# Stages whose model is a base model, fine-tuned on the demonstrations before it is an RM trunk.
BASE_STAGES = ('pretrain', 'pretrain_rm')


def _main(*args: str) -> None:
  command = [sys.executable, '-m', 'rlhf_jax.main', *args]
  print('$', ' '.join(command[1:]), flush=True)
  subprocess.run(command, check=True)


def summary(folder: pathlib.Path) -> dict:
  """A complete stage folder's summary; FileNotFoundError for anything else."""
  done = checkpoint.read_summary(str(folder))
  if done is None:
    raise FileNotFoundError(f'{folder}: not a complete stage (no summary.json)')
  return done


def geometry(folder: pathlib.Path) -> dict:
  """The model fields of a complete stage folder (its summary's 'model')."""
  model = summary(folder).get('model')
  if not model:
    raise ValueError(f'{folder}/summary.json records no model geometry')
  return model


def overrides(prefix: str, model: dict) -> list[str]:
  return [f'--config.{prefix}.{k}={model[k]}' for k in MODEL_FIELDS if k in model]


def n_params(model: dict) -> int:
  """Parameters of a reward model of this geometry (trunk and scalar head)."""
  config = config_lib.to_model_config(ml_collections.ConfigDict(model))
  shapes = jax.eval_shape(functools.partial(state.init_params, config, 'scalar'),
                          jax.random.key(0))
  return state.count_params(shapes)


def sft_trunk(name: str, folder: pathlib.Path, workdir: pathlib.Path, out: pathlib.Path,
              extra: list[str]) -> pathlib.Path:
  """`folder` itself when it holds an SFT model; a base model's SFT by configs/sft_rm.py."""
  if summary(folder).get('stage') not in BASE_STAGES:
    return folder
  target = out / f'sft_{name}'
  _main('--config=configs/sft_rm.py', f'--workdir={target}', f'--reuse_from={workdir}',
        f'--config.init_from={folder.resolve()}', *overrides('model', geometry(folder)), *extra)
  return target / 'sft_rm'


def run_point(name: str, trunk: pathlib.Path, fraction: float, workdir: pathlib.Path,
              out: pathlib.Path, n_rankings: int, args, extra: list[str]) -> pathlib.Path:
  """Trains the RM of one (trunk, fraction) point and PPO against it; the PPO stage folder."""
  model = geometry(trunk)
  point = out / f'{name}_{fraction:g}'
  full_steps = max(1, n_rankings // config_lib.load_config('configs/rm.py').batch_size)
  _main('--config=configs/rm.py', f'--workdir={point}', f'--reuse_from={workdir}',
        f'--config.init_from={trunk.resolve()}', *overrides('model', model),
        f'--config.total_steps={max(1, round(fraction * full_steps))}', *extra)
  _main(f'--config={args.ppo_config}', f'--workdir={point}', f'--reuse_from={workdir}',
        f'--config.reward_from={(point / "rm").resolve()}', *overrides('reward_model', model),
        f'--config.best_of_n={args.best_of_n}', '--config.then=()', *extra)
  return next(point / s for s in config_lib.PPO_STAGES if (point / s / 'summary.json').exists())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--trunks', default='policy=sft,tiny-rm=sft_rm',
                      help='NAME=FOLDER, comma-separated; a bare stage name is in --workdir')
  parser.add_argument('--fractions', default='1,0.5')
  parser.add_argument('--best_of_n', type=int, default=64)
  parser.add_argument('--ppo_config', default='configs/ppo.py')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--set', action='append', default=[], metavar='config.FIELD=VALUE',
                      help='another override for every run (e.g. a smaller world for a test)')
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  out = workdir.with_name(f'{workdir.name}_rm_sizes')
  extra = [f'--config.seed={args.seed}', *(f'--{o}' for o in args.set)]
  fractions = [float(f) for f in args.fractions.split(',')]
  if not all(0 < f <= 1 for f in fractions):
    parser.error(f'--fractions {args.fractions}: each must be in (0, 1]')
  try:
    trunks = {name: workdir / folder if '/' not in folder else pathlib.Path(folder)
              for name, _, folder in (t.partition('=') for t in args.trunks.split(','))}
    n_rankings = len(records.read_records(
        label_stage.paths(layout.stage_dir(workdir, 'label'))['train'], 'rankings'))
    runs = {}
    for name, folder in trunks.items():
      trunk = sft_trunk(name, folder, workdir, out, extra)
      size = n_params(geometry(trunk))
      for fraction in fractions:
        ppo = run_point(name, trunk, fraction, workdir, out, n_rankings, args, extra)
        runs[f'{name} ({size / 1e6:.1f}M) x{fraction:g}'] = str(ppo)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f'rm_sizes.py: {e}')
  except subprocess.CalledProcessError as e:
    sys.exit(f'rm_sizes.py: a run failed ({" ".join(e.cmd[1:])})')
  rows = overoptimisation.report(runs, out)
  atomic.write_lines(out / 'fits.json', [json.dumps({'runs': runs, 'fits': rows}, indent=1) + '\n'])


if __name__ == '__main__':
  main()
