"""A FLAN / T0 analog against InstructGPT in the mini world (paper 4.2, Fig. 5).

  python experiments/instructgpt_mini/flan.py [--workdir runs/mini] [--seed 0]
      [--set config.FIELD=VALUE ...]

The paper fine-tuned GPT-3 on the FLAN and T0 mixtures (public NLP tasks cast as instructions)
and found InstructGPT preferred on the API prompt distribution (78% and 79% of the time at 175B;
Likert 1-7, Fig. 5). Here the world's base model (the workdir's pretrain stage) is fine-tuned,
with the SFT stage's own settings, on the world's public-NLP-style mixture
(`world.public_evals.instruction_mixture`: the zero-shot evals' tasks with phrasings of their
own, as many records as the workdir's SFT demonstrations) in <workdir>_flan, then evaluated on
the test prompts by the held-out labelers beside the workdir's policies (the eval stage, in
<workdir>_flan_eval, the FLAN model as an extra policy). Nothing is chosen from its numbers.
Differences from the paper: one mixture, not two; the checkpoint is picked by validation loss on
held-out mixture records, as the mini world's SFT picks its own, where the paper picked by
validation reward; the base model is the world's, not GPT-3.

Wall time on the 2-core CPU (2026-12-02, beside one other job): 8 minutes for the fine-tuning,
2.5 for the evaluation, after the main job.
"""
import argparse
import json
import pathlib
import subprocess
import sys

from rlhf_jax.data import records
from rlhf_jax.world import public_evals

NAME = 'flan'
# Seed streams of the mixture's splits, apart from the world's own.
SPLITS = {'train': 1, 'valid': 2}


def write_mixture(data: pathlib.Path, sizes: dict[str, int], seed: int) -> dict[str, pathlib.Path]:
  """The mixture's train and valid demonstrations as JSONL files in `data`; their paths."""
  paths = {}
  for split, size in sizes.items():
    paths[split] = data / f'demonstrations_{split}.jsonl'
    records.write_records(paths[split], 'demonstrations',
                          public_evals.instruction_mixture(seed * 1000 + SPLITS[split], size))
  return paths


def _main(*args: str) -> None:
  command = [sys.executable, '-m', 'rlhf_jax.main', *args]
  print('$', ' '.join(command[1:]), flush=True)
  subprocess.run(command, check=True)


def run(workdir: pathlib.Path, seed: int, overrides: tuple[str, ...] = ()) -> dict:
  """Trains the FLAN analog and evaluates it with the workdir's policies; the eval report."""
  flan = workdir.with_name(f'{workdir.name}_{NAME}')
  evaluation = workdir.with_name(f'{workdir.name}_{NAME}_eval')
  sizes = {split: len(records.read_records(workdir / 'data' / f'demonstrations_sft_{split}.jsonl',
                                            'demonstrations')) for split in SPLITS}
  paths = write_mixture(flan / 'mixture', sizes, seed)
  extra = [f'--config.seed={seed}', *(f'--{o}' for o in overrides)]
  _main('--config=configs/sft.py', f'--workdir={flan}', f'--reuse_from={workdir}',
        f'--config.data.demonstrations={paths["train"].resolve()}',
        f'--config.data.demonstrations_valid={paths["valid"].resolve()}', *extra)
  _main('--config=configs/eval.py', f'--workdir={evaluation}', f'--reuse_from={workdir}',
        f'--config.extra_policies={NAME}={(flan / "sft").resolve()}', *extra)
  return json.loads((evaluation / 'eval' / 'report.json').read_text())


def table(report: dict) -> str:
  """A markdown table of every evaluated policy: Likert, win rate against SFT (with its 95%
  interval), instruction failures and the public NLP evals' mean accuracy."""
  lines = ['| policy | Likert (1-7) | win rate vs SFT | fails instruction | public NLP evals |',
           '|---|---|---|---|---|']
  for name, p in report['policies'].items():
    low, high = p['win_rate_ci']
    evals = p.get('public_evals') or {}
    accuracy = f'{sum(evals.values()) / len(evals):.3f}' if evals else '-'
    lines.append(f'| {name} | {p["likert"]:.2f} | {p["win_rate_vs_sft"]:.3f} '
                 f'[{low:.3f}, {high:.3f}] | {p["fails_instruction_rate"]:.3f} | {accuracy} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--set', action='append', default=[], metavar='config.FIELD=VALUE',
                      help='another override for both runs (e.g. a shorter run for a smoke test)')
  args = parser.parse_args()
  print(table(run(pathlib.Path(args.workdir), args.seed, tuple(args.set))))


if __name__ == '__main__':
  main()
