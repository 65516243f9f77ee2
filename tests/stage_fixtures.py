"""One tiny workdir shared by the stage tests: world -> pretrain -> sft -> pretrain_rm -> sft_rm
-> sample -> label.

Built once per test session (pytest-xdist workers wait on a file lock for the first to build it),
at world scale 0.01 with 3-step LM stages and 16 sampled training and validation prompts. Sample and label run
through the CLI in subprocesses, as a user runs them; their logs are kept as cli_<stage>.log.

Tests never modify it: `copy_workdir(tiny_workdir, dest, stages)` gives a private copy of some
stage folders. conftest.py registers the `tiny_workdir` fixture for every test module.
"""
import fcntl
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

WORLD_SCALE = 0.01
SAMPLED_PROMPTS = 16
READY = 'READY'


def stage_config(name: str, workdir, **overrides):
  """configs/<name>.py at the tiny geometry, in `workdir`, with world scale WORLD_SCALE."""
  from rlhf_jax import config_lib  # pylint: disable=g-import-not-at-top  # after conftest's flags
  config = config_lib.load_config(f'configs/{name}.py')
  config.workdir = str(workdir)
  config.data.world_scale = WORLD_SCALE
  for key, value in overrides.items():
    config[key] = value
  return config


def run_cli(*args, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m rlhf_jax.main ARGS` (the 8 fake devices of conftest are inherited)."""
  return subprocess.run([sys.executable, '-m', 'rlhf_jax.main', *args], capture_output=True,
                        text=True, timeout=timeout)


def cli_args(stage: str, workdir, *overrides: str) -> list[str]:
  return [f'--config=configs/{stage}.py', f'--workdir={workdir}',
          f'--config.data.world_scale={WORLD_SCALE}', *overrides]


def _build(workdir: pathlib.Path) -> None:
  from rlhf_jax import stages  # pylint: disable=g-import-not-at-top
  if workdir.exists():
    shutil.rmtree(workdir)  # a build that failed half-way
  stages.run(stage_config('pretrain', workdir, total_steps=3, log_every=1, eval_every=0))
  stages.run(stage_config('sft', workdir, total_steps=3, log_every=1, eval_every=0))
  for stage in ('pretrain_rm', 'sft_rm'):  # the reward model's own base and SFT models
    stages.run(stage_config(stage, workdir, total_steps=3, log_every=1, eval_every=0))
  sample_args = [f'--config.max_prompts={SAMPLED_PROMPTS}',
                 f'--config.max_valid_prompts={SAMPLED_PROMPTS}']
  for stage, extra in (('sample', sample_args), ('label', [])):
    result = run_cli(*cli_args(stage, workdir, *extra))
    (workdir / f'cli_{stage}.log').write_text(
        f'returncode {result.returncode}\n{result.stdout}\n{result.stderr}')
    if result.returncode:
      raise RuntimeError(f'{stage} CLI failed:\n{result.stderr[-3000:]}')
  (workdir / READY).touch()


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory) -> pathlib.Path:
  """The shared, complete tiny workdir (read-only by convention)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the folder all workers of this session share
  workdir = root / 'tiny_workdir'
  with open(root / 'tiny_workdir.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / READY).exists():
      _build(workdir)
  return workdir


def copy_workdir(source: pathlib.Path, dest: pathlib.Path, stages=None) -> pathlib.Path:
  """A private copy of `source` holding only the given stage folders (default: all)."""
  dest.mkdir(parents=True, exist_ok=True)
  for folder in source.iterdir():
    if folder.is_dir() and (stages is None or folder.name in stages):
      shutil.copytree(folder, dest / folder.name)
  return dest
