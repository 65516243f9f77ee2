"""Stages of the pipeline, their inputs, and running whatever is missing.

Each stage reads named folders of the workdir and writes its own folder, which counts as complete
once it holds `summary.json`. Running a stage first runs (with the same geometry, workdir and seed)
every stage it needs whose folder is not complete, so the main command works on a fresh machine.
"""
import contextlib
import fcntl
import os
import pathlib
import shutil
import socket
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import checkpoint, config_lib, loop
from rlhf_jax.data import pipeline, records
from rlhf_jax.models import hf
from rlhf_jax.stages import eval as eval_stage
from rlhf_jax.stages import label, lm, ppo, rm, sample, world
from rlhf_jax.stages.layout import WorkdirError, stage_dir, summary

# Failures of a run that are the input's fault: main prints them as one line and exits 1.
STAGE_ERRORS = (loop.NonFiniteLoss, checkpoint.CheckpointMismatch, checkpoint.CheckpointCorrupt,
                records.RecordError, hf.HFError, FileNotFoundError, WorkdirError)

# stage -> stages whose outputs it reads. Listed in pipeline order.
NEEDS: dict[str, tuple[str, ...]] = {
    'world': (),
    'pretrain': ('world',),
    'sft': ('pretrain',),
    'sft_init': ('pretrain',),
    'sample': ('pretrain', 'sft'),
    'label': ('sample',),
    # The reward model's own base and SFT models, at its (larger) geometry (paper §3.5).
    'pretrain_rm': ('world',),
    'sft_rm': ('pretrain_rm',),
    'rm': ('label', 'sft_rm'),
    # With validation on, also `baseline_from` (sft), the baseline it judges against.
    'ppo': ('sft_init', 'rm'),
    'ppo_ptx': ('sft_init', 'rm'),
    # Also evaluates gpt, gpt_prompted, ppo and ppo_ptx when complete; SFT is the baseline.
    'eval': ('world', 'sft'),
}
# stage -> its runner: `runner(config, stage_dir) -> summary dict`.
RUNNERS: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path], dict]] = {
    'world': world.run,
    'pretrain': lm.run_lm,
    'pretrain_rm': lm.run_lm,
    'sft': lm.run_lm,
    'sft_rm': lm.run_lm,
    'sft_init': lm.run_lm,
    'sample': sample.run,
    'label': label.run,
    'rm': rm.run_rm,
    'ppo': ppo.run_ppo,
    'ppo_ptx': ppo.run_ppo,
    'eval': eval_stage.run,
}


# stage -> the stage its `init_from` names by default (a Hugging Face folder or another stage
# given instead replaces that dependency).
INIT_STAGES = {'sft': 'pretrain', 'sft_init': 'pretrain', 'sft_rm': 'pretrain_rm', 'rm': 'sft_rm'}
# Data fields a dependency inherits from the stage that asked for it (user data, world size).
SHARED_DATA = ('world_scale', 'tokenizer', 'pretrain', 'pretrain_valid', 'demonstrations',
               'demonstrations_valid', 'rankings', 'rankings_valid', 'prompts', 'prompts_valid')


def dependency_spec(config: ml_collections.ConfigDict, stage: str,
                    config_dir: str | pathlib.Path) -> str:
  """The config of `stage` in the pipeline of `config`, as `--config` names it: `<stage>.py`
  in `config_dir` (the folder of the config that was run), or the config's own `stage_configs`
  (a recipe's file with '{stage}' and '{geometry}' to fill), at the pipeline's geometry."""
  # The pipeline's geometry is the policy's; a stage of another model (the RM's) records it.
  geometry = config.get('pipeline_geometry') or config.model.geometry
  if config.get('stage_configs'):
    return config.stage_configs.format(stage=stage, geometry=geometry)
  return f'{pathlib.Path(config_dir) / (stage + ".py")}:{geometry}'


def dependency_config(config: ml_collections.ConfigDict, stage: str,
                      config_dir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config of `stage` (`dependency_spec`), sharing workdir, seed and data sizes.

  Its own `then` is dropped: only the stage a user asked for continues to follow-up stages.
  """
  dep = config_lib.load_config(dependency_spec(config, stage, config_dir))
  dep.workdir, dep.seed = config.workdir, config.seed
  if 'then' in dep:
    dep.then = ()
  if 'data' in config and 'data' in dep:
    for field in SHARED_DATA:
      if field in config.data and field in dep.data:
        dep.data[field] = config.data[field]
  return dep


def needs(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The stages `config.stage` reads, less those whose output the config supplies itself: an
  `init_from` other than the default (a Hugging Face folder, a checkpoint folder or another
  stage) replaces the default init stage, a user tokenizer (with user data) replaces the mini
  'world', and imported human rankings replace 'sample'."""
  supplied, instead = set(), ()
  init_from = str(config.get('init_from', ''))
  default_init = INIT_STAGES.get(config.stage)
  if default_init and init_from != default_init:
    supplied.add(default_init)
    if init_from in NEEDS and init_from not in NEEDS[config.stage]:
      instead = (init_from,)  # another stage's model (a recipe's RM starts from 'sft')
  data = config.get('data') or {}
  if data.get('tokenizer'):
    supplied.add('world')
  if data.get('rankings'):
    supplied.add('sample')
  if config.get('valid_prompts') and config.baseline_from in NEEDS:
    instead += (config.baseline_from,)
  return tuple(n for n in NEEDS[config.stage] if n not in supplied) + instead


# Config fields naming an input stage -> the config's model block that loads that stage's model.
MODEL_INPUTS = {'init_from': 'model', 'baseline_from': 'model', 'reward_from': 'reward_model'}


def check_inputs(config: ml_collections.ConfigDict, config_dir: str | pathlib.Path) -> None:
  """What a run of `config` checks before any input stage runs: the config (`config_lib.validate`)
  and those of its follow-up stages (`then`), and its fit to its inputs, completed or still to
  run with their shipped configs: a model the stage loads from an input stage has that stage's
  geometry, and the reward model's k_max holds every ranking (the label stage's files, or the
  sample stage's k_max when it is still to run).

  Raises:
    ConfigError: with a one-line message.
  """
  config_lib.validate(config)
  if config.stage not in NEEDS:
    raise config_lib.ConfigError(f'stage {config.stage!r} unknown; known: {", ".join(NEEDS)}')
  for follow_up in config.get('then', ()):
    config_lib.validate(dependency_config(config, follow_up, config_dir))
  inputs = needs(config)
  for field, block in MODEL_INPUTS.items():
    stage = config.get(field)
    if stage not in inputs:
      continue
    done = summary(config.workdir, stage)
    if done is None:
      model = dependency_config(config, stage, config_dir).model
      where = dependency_spec(config, stage, config_dir)
    elif 'model' in done:
      model, where = done['model'], f'{stage_dir(config.workdir, stage)}/summary.json'
    else:  # a summary without its geometry: loading the checkpoint checks it instead
      continue
    ours, theirs = config_lib.to_model_config(config[block]), config_lib.to_model_config(model)
    for name in checkpoint.GEOMETRY_FIELDS:
      if getattr(ours, name) != getattr(theirs, name):
        raise config_lib.ConfigError(
            f'{block}: {name}={getattr(ours, name)} but {field}={stage!r} has '
            f'{name}={getattr(theirs, name)} ({where}); its checkpoint would not load')
  if config.stage == 'rm':
    if summary(config.workdir, 'label') is not None:
      rm.check_k(config, label.paths(stage_dir(config.workdir, 'label')))
    elif not config.data.get('rankings') and summary(config.workdir, 'sample') is None:
      sample_k = dependency_config(config, 'sample', config_dir).k_max
      if sample_k > config.k_max:
        raise config_lib.ConfigError(
            f'k_max={config.k_max} but the sample stage ranks up to k_max={sample_k} '
            f'completions ({dependency_spec(config, "sample", config_dir)})')


def run(config: ml_collections.ConfigDict, config_dir: str | pathlib.Path = 'configs',
        force: bool = False) -> dict:
  """Runs `config.stage` after any missing inputs, then the stages in `config.then` (if any).

  Returns:
    The summary of `config.stage`.

  Raises:
    ConfigError: `check_inputs` refuses the config, before anything runs.
  """
  stage = config.stage
  check_inputs(config, config_dir)
  for need in needs(config):
    if summary(config.workdir, need) is None:
      print(f'[{stage}] input {need!r} missing in {config.workdir}: running it first', flush=True)
      run(dependency_config(config, need, config_dir), config_dir)
  result = _run_stage(config, force)
  for follow_up in config.get('then', ()):
    run(dependency_config(config, follow_up, config_dir), config_dir)
  return result


def _run_stage(config: ml_collections.ConfigDict, force: bool) -> dict:
  """Runs `config.stage` itself unless complete (or forced); writes and returns its summary.

  The stage's folder is locked for the run (`_stage_lock`); a forced run sets the old output
  aside until it starts (`_forced`). The summary lists the records the stage's datasets dropped
  ('data_dropped', only when some were).
  """
  stage = config.stage
  folder = stage_dir(config.workdir, stage)
  with _stage_lock(folder):
    _restore_set_aside(folder)
    done = summary(config.workdir, stage)
    if done is not None and not force:
      print(f'[{stage}] already complete in {folder}', flush=True)
      return done
    start = time.time()
    with _forced(folder, force and stage not in SHARED_FOLDERS):
      with pipeline.collecting_drops() as dropped:
        result = RUNNERS[stage](config, folder)
    return _finish(config, folder, result, start, dropped)


def _finish(config: ml_collections.ConfigDict, folder: pathlib.Path, result: dict, start: float,
            dropped: list[dict]) -> dict:
  """Completes the summary of `config.stage`, writes it (marking the stage done), returns it."""
  stage = config.stage
  result = dict(result, stage=stage, seconds=round(time.time() - start, 1))
  if dropped:
    result['data_dropped'] = dropped
  if 'model' in config:  # later stages rebuild this stage's geometry from its summary
    result['model'] = config.model.to_dict()
  checkpoint.write_summary(str(folder), result)
  return result


# Stages whose folder may also hold a user's files (data beside the world's): a forced run
# rewrites its own files in place rather than setting the folder aside.
SHARED_FOLDERS = ('world',)


def _on_all_processes(action) -> None:
  """Runs a file operation on process 0 only (the workdir is shared) and waits for it."""
  if jax.process_index() == 0:
    action()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'stages: {action.__name__}')


def _as_process_0_sees(flag: bool) -> bool:
  """`flag` as computed on process 0, on every process: the others may look at the workdir
  while process 0 is changing it, and all must take the same branch to the same barriers."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _set_aside_path(folder: pathlib.Path) -> pathlib.Path:
  return folder.with_name(f'.{folder.name}.replaced')


@contextlib.contextmanager
def _stage_lock(folder: pathlib.Path):
  """Holds an exclusive lock on `folder` for this run, in the sibling file `.<name>.lock`.

  Process 0 takes the lock for all processes of a run (they share the workdir); the kernel
  drops it when the process ends, however it ends.

  Raises:
    WorkdirError: another process holds it; the message names that process.
  """
  holder, lock = None, None
  if jax.process_index() == 0:
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = open(folder.with_name(f'.{folder.name}.lock'), 'a+')
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip() or 'another process'
      lock.close()
    else:
      lock.truncate(0)
      lock.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
      lock.flush()
  if jax.process_count() > 1:
    busy = multihost_utils.broadcast_one_to_all(np.int32(holder is not None))
    holder = holder or ('another process (seen by process 0)' if busy else None)
  if holder is not None:
    raise WorkdirError(f'{folder}: in use by {holder}; wait for that run to end or stop it')
  try:
    yield
  finally:
    if lock is not None:
      lock.close()


def _restore_set_aside(folder: pathlib.Path) -> None:
  """Puts back the output a forced run set aside and never replaced (it ended before it
  started: killed, or its inputs failed), dropping whatever that run left."""
  aside = _set_aside_path(folder)
  if not _as_process_0_sees(aside.exists()):
    return
  print(f'[stages] {folder}: restoring the output a forced run set aside before it ended',
        flush=True)

  def restore():
    shutil.rmtree(folder, ignore_errors=True)
    aside.rename(folder)
  _on_all_processes(restore)


@contextlib.contextmanager
def _forced(folder: pathlib.Path, force: bool):
  """A forced run starts over, but the old output is only removed once the new run starts.

  The old folder is moved aside (`.<name>.replaced`); when a training loop in `folder` has built
  its state (`loop.when_started`), or the runner returns, it is deleted. If the runner fails
  before that, its partial folder is dropped and the old output put back.
  """
  if not force or not _as_process_0_sees(folder.exists()):
    yield
    return
  aside = _set_aside_path(folder)
  started = False

  def set_aside():
    folder.rename(aside)

  def remove_old():
    shutil.rmtree(aside)

  def start():
    nonlocal started
    if not started:
      started = True
      _on_all_processes(remove_old)
  _on_all_processes(set_aside)
  try:
    with loop.when_started(str(folder), start):
      yield
  except BaseException:
    if not started:
      _restore_set_aside(folder)
    raise
  start()
