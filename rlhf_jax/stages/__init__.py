"""Stages of the pipeline, their inputs, and running whatever is missing.

Each stage reads named folders of the workdir and writes its own folder, which counts as complete
once it holds `summary.json`. Running a stage first runs (with the same geometry, workdir and seed)
every stage it needs whose folder is not complete, so the main command works on a fresh machine.
"""
import importlib
import pathlib
import time

import ml_collections

from rlhf_jax import checkpoint, config_lib, loop
from rlhf_jax.data import records
from rlhf_jax.models import hf

# Failures of a run that are the input's fault: main prints them as one line and exits 1.
STAGE_ERRORS = (loop.NonFiniteLoss, checkpoint.CheckpointMismatch, records.RecordError,
                hf.HFError, FileNotFoundError)

# stage -> stages whose outputs it reads. Listed in pipeline order.
NEEDS: dict[str, tuple[str, ...]] = {
    'world': (),
    'pretrain': ('world',),
    'sft': ('pretrain',),
    'sft_init': ('pretrain',),
}
# stage -> 'module:function' running it as `function(config, stage_dir) -> summary dict`.
RUNNERS = {
    'world': 'world:run',
    'pretrain': 'lm:run_lm',
    'sft': 'lm:run_lm',
    'sft_init': 'lm:run_lm',
}


def stage_dir(workdir: str, stage: str) -> pathlib.Path:
  return pathlib.Path(workdir) / ('data' if stage == 'world' else stage)


def summary(workdir: str, stage: str) -> dict | None:
  """The stage's summary.json if it completed, else None."""
  return checkpoint.read_summary(str(stage_dir(workdir, stage)))


def dependency_config(config: ml_collections.ConfigDict, stage: str,
                      config_dir: pathlib.Path) -> ml_collections.ConfigDict:
  """The shipped config of `stage` at the same geometry, sharing workdir, seed and data sizes."""
  dep = config_lib.load_config(f'{config_dir / (stage + ".py")}:{config.model.geometry}')
  dep.workdir, dep.seed = config.workdir, config.seed
  if 'data' in config and 'data' in dep:
    dep.data.world_scale = config.data.world_scale
  return dep


def run(config: ml_collections.ConfigDict, config_dir: str | pathlib.Path = 'configs',
        force: bool = False) -> dict:
  """Runs `config.stage` after any missing inputs; returns its summary."""
  stage = config.stage
  if stage not in NEEDS:
    raise config_lib.ConfigError(f'stage {stage!r} unknown; known: {", ".join(NEEDS)}')
  for need in NEEDS[stage]:
    if summary(config.workdir, need) is None:
      print(f'[{stage}] input {need!r} missing in {config.workdir}: running it first', flush=True)
      run(dependency_config(config, need, pathlib.Path(config_dir)), config_dir)
  done = summary(config.workdir, stage)
  if done is not None and not force:
    print(f'[{stage}] already complete in {stage_dir(config.workdir, stage)}', flush=True)
    return done
  start = time.time()
  module, function = RUNNERS[stage].split(':')
  runner = getattr(importlib.import_module(f'rlhf_jax.stages.{module}'), function)
  result = runner(config, stage_dir(config.workdir, stage))
  result = dict(result, stage=stage, seconds=round(time.time() - start, 1))
  if 'model' in config:  # later stages rebuild this stage's geometry from its summary
    result['model'] = config.model.to_dict()
  checkpoint.write_summary(str(stage_dir(config.workdir, stage)), result)
  return result
