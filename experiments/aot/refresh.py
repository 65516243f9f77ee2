"""Regenerates every fit figure: the aot reports, the README's fit tables and the guard's record.

  nice -n 15 python experiments/aot/refresh.py [--only=ppo_ptx --only=1.3b] [--tables_only]

For every paper config (sft, sft_init, rm, ppo, ppo_ptx at 1.3b, 6b and 175b, each on the slice
it names) and every real-data recipe (HH and TL;DR at Pythia-1B on a v5e-8), it runs
`rlhf_jax.aot.check` and writes the report to experiments/aot/<name>.json with the commit, the
date, the jax and libtpu versions and the host's load average before and after (compile times
on a busy host are upper bounds). A program another config compiles identically (sft_init's
step is sft's) is compiled once and reported for both. It then rewrites the README's tables
between their `<!-- aot:... -->` markers from all the reports present, and records the guard
steps' temporaries (experiments/aot/guard.json, read by tests/test_aot_guard.py).

`--only` selects reports whose name contains every given string (the guard record is then left
alone unless --only=guard); `--tables_only` rewrites the tables from the reports already there.
To measure committed code only, run it in a clean worktree with PYTHONPATH pointing there and
copy the reports back, then run --tables_only here.
"""
import datetime
import json
import os
import pathlib
import re
import subprocess
from importlib import metadata

from absl import app, flags

from rlhf_jax import aot, config_lib

flags.DEFINE_multi_string('only', [], 'Refresh only reports whose name contains all of these.')
flags.DEFINE_bool('tables_only', False, 'Rewrite the README tables from the existing reports.')
FLAGS = flags.FLAGS

ROOT = config_lib.CONFIG_DIR.parent
REPORTS = ROOT / 'experiments' / 'aot'
README = ROOT / 'README.md'
PAPER_STAGES = ('sft', 'sft_init', 'rm', 'ppo', 'ppo_ptx')
RECIPE_STAGES = ('sft', 'sft_init', 'rm', 'ppo_ptx')
RECIPE_TOPOLOGY = 'v5e:2x4'  # the TPU v5e-8 the recipes are written for
GIB = aot.GIB


def jobs() -> list[tuple[str, str, str | None]]:
  """(report name, config spec, topology or None for the config's own), in refresh order."""
  paper = [(f'paper_{geometry}_{stage}', f'configs/{stage}.py:{geometry}', None)
           for geometry in config_lib.PAPER_GEOMETRIES for stage in PAPER_STAGES]
  recipes = [(f'{recipe}_pythia-1b_{stage}',
              f'configs/recipes/{recipe}.py:stage={stage},geometry=pythia-1b', RECIPE_TOPOLOGY)
             for recipe in ('hh', 'tldr') for stage in RECIPE_STAGES]
  return paper + recipes


def _git(*args: str) -> str:
  # rstrip: a porcelain status line starts with a space when the index matches HEAD.
  return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True,
                        check=True).stdout.rstrip()


def provenance() -> dict:
  """Commit (with the code paths that differ from it), date, versions and CPU count."""
  dirty = _git('status', '--porcelain', '--', 'rlhf_jax', 'configs').splitlines()
  return {'commit': _git('rev-parse', '--short=10', 'HEAD'),
          'uncommitted': [line[3:] for line in dirty],
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
          'jax': metadata.version('jax'), 'libtpu': metadata.version('libtpu'),
          'host_cpus': os.cpu_count()}


def _write(path: pathlib.Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2) + '\n')


def refresh_reports(selected: list[tuple[str, str, str | None]]) -> None:
  """Checks each selected config and writes its report as soon as it is done."""
  programs = {}
  for name, spec, topology in selected:
    config = config_lib.load_config(str(ROOT / spec))
    config_lib.validate(config)
    topology = topology or config.topology
    load_before = os.getloadavg()
    report = aot.check(config, topology, programs)
    report = {'name': name, 'config': spec, 'remat': config.model.remat, **provenance(),
              'load_average': {'before': load_before, 'after': os.getloadavg()}, **report}
    path = REPORTS / f"{name}_{topology.replace(':', '-')}.json"
    _write(path, report)
    steps = ', '.join(f"{k} {s['bytes_per_device'] / GIB:.2f} GiB ({s['compile_seconds']} s)"
                      for k, s in report['steps'].items())
    print(f'{path.name}: {steps}', flush=True)


def refresh_guard() -> None:
  _write(aot.GUARD_RECORD, {'topology': aot.GUARD_TOPOLOGY, 'tolerance': aot.GUARD_TOLERANCE,
                            **provenance(), 'temp_bytes': aot.guard_temps()})
  print(f'{aot.GUARD_RECORD.name}: written', flush=True)


def _gib(step: dict) -> str:
  text = f"{step['bytes_per_device'] / GIB:.1f}"
  return text if step['fits'] else f'**{text}, does not fit**'


def _steps_cell(report: dict) -> str:
  steps = report['steps']
  if len(steps) == 1:
    return _gib(next(iter(steps.values())))
  return ', '.join(f'{name} {_gib(s)}' for name, s in steps.items())


def _compile_cell(report: dict) -> str:
  seconds = ', '.join(f"{s['compile_seconds']:.0f}" for s in report['steps'].values())
  return f"{seconds} s (load {report['load_average']['before'][0]:.1f})"


def _grouped(reports: list[dict]) -> list[tuple[list[dict], dict]]:
  """Reports that compiled the same programs, together: ([reports], the first one)."""
  groups: dict[tuple[str, ...], list[dict]] = {}
  for r in reports:
    groups.setdefault(tuple(s['program'] for s in r['steps'].values()), []).append(r)
  return [(group, group[0]) for group in groups.values()]


def _joined(values) -> str:
  return ', '.join(dict.fromkeys(values))


def paper_table(reports: list[dict]) -> list[str]:
  lines = ['| geometry | stage | topology | mesh (data x fsdp x tensor) | remat | GiB per device '
           '(of HBM) | compile (1-min load average) |', '|---|---|---|---|---|---|---|']
  for group, r in _grouped(reports):
    mesh = ' x '.join(str(r['mesh'][a]) for a in ('data', 'fsdp', 'tensor'))
    hbm = next(iter(r['steps'].values()))['hbm_per_device'] / GIB
    lines.append(f"| {_joined(g['name'].split('_')[1] for g in group)} "
                 f"| {_joined(g['name'].split('_', 2)[2] for g in group)} "
                 f"| {r['topology']} ({r['devices']} chips) | {mesh} | {r['remat']} "
                 f"| {_steps_cell(r)} (of {hbm:.0f}) | {_compile_cell(r)} |")
  return lines


def _models_cell(params: dict) -> str:
  by_size: dict[int, list[str]] = {}
  for role, n in params.items():
    by_size.setdefault(n, []).append(role)
  return '; '.join(f"{', '.join(roles)} {n / 1e9:.2f}B" for n, roles in by_size.items())


def recipe_table(reports: list[dict]) -> list[str]:
  lines = ['| recipe | stage | models | steps: GiB per chip (of 16) | compile (1-min load '
           'average) |', '|---|---|---|---|---|']
  for group, r in _grouped(reports):
    steps = ', '.join(f'{name} {_gib(s)}' for name, s in r['steps'].items())
    lines.append(f"| {r['name'].split('_')[0]} | {_joined(g['name'].split('_', 2)[2] for g in group)}"
                 f" | {_models_cell(r['params'])} | {steps} | {_compile_cell(r)} |")
  return lines


def _source_line(reports: list[dict]) -> str:
  commits = _joined(r['commit'] + (' with uncommitted changes' if r['uncommitted'] else '')
                    for r in reports)
  dates = sorted(r['date'] for r in reports)
  loads = [r['load_average']['before'][0] for r in reports]
  return (f"Generated by `experiments/aot/refresh.py` from {len(reports)} report"
          f"{'s' if len(reports) > 1 else ''} in "
          f"`experiments/aot/` (commit {commits}; {dates[0]} to {dates[-1]}; jax "
          f"{reports[0]['jax']}, libtpu {reports[0]['libtpu']}; compiled on a "
          f"{reports[0]['host_cpus']}-core CPU host at 1-minute load averages "
          f"{min(loads):.1f} to {max(loads):.1f}, so compile times are upper bounds).")


def rewrite_readme() -> None:
  """Replaces each `<!-- aot:KIND -->` ... `<!-- /aot:KIND -->` block with its table."""
  reports = [json.loads(p.read_text()) for p in sorted(REPORTS.glob('*.json'))
             if p != aot.GUARD_RECORD]
  order = {name: i for i, (name, _, _) in enumerate(jobs())}
  reports = sorted((r for r in reports if r.get('name') in order), key=lambda r: order[r['name']])
  text = README.read_text()
  for kind, table in (('paper', paper_table), ('recipes', recipe_table)):
    chosen = [r for r in reports if r['name'].startswith('paper_') == (kind == 'paper')]
    if not chosen:  # nothing measured of this kind yet: its table stays as it is
      continue
    block = '\n'.join([f'<!-- aot:{kind} -->', *table(chosen), '', _source_line(chosen),
                       f'<!-- /aot:{kind} -->'])
    text, n = re.subn(rf'<!-- aot:{kind} -->.*?<!-- /aot:{kind} -->', lambda _: block, text,
                      flags=re.S)
    if n != 1:
      raise SystemExit(f'README.md: expected one <!-- aot:{kind} --> block, found {n}')
  README.write_text(text)


def main(argv):
  del argv
  if not FLAGS.tables_only:
    selected = [job for job in jobs() if all(s in job[0] for s in FLAGS.only)]
    refresh_reports(selected)
    if not FLAGS.only or FLAGS.only == ['guard']:
      refresh_guard()
  rewrite_readme()


if __name__ == '__main__':
  app.run(main)
