"""Stages of the pipeline, their inputs, and running whatever is missing.

Each stage reads named folders of the workdir and writes its own folder, which counts as complete
once it holds `summary.json`. Running a stage first runs (with the same geometry, workdir and seed)
every stage it needs whose folder is not complete, so the main command works on a fresh machine.
"""
import contextlib
import datetime
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

from rlhf_jax import checkpoint, config_lib, hf, loop, metrics
from rlhf_jax.data import pipeline, records
from rlhf_jax.stages import eval as eval_stage
from rlhf_jax.stages import label, lm, ppo, progress, provenance, rm, sample, world
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


def dependency_spec(config: ml_collections.ConfigDict, stage: str) -> str:
  """The config of `stage` in the pipeline of `config`, as `--config` names it: the config's
  `stage_configs`, or else `<stage>.py` beside its `config_file` (the shipped configs for a
  config built in code), at the pipeline's geometry."""
  # The pipeline's geometry is the policy's; a stage of another model (the RM's) records it.
  geometry = config.get('pipeline_geometry') or config.model.geometry
  folder = (pathlib.Path(config.config_file).parent if config.get('config_file')
            else config_lib.CONFIG_DIR)
  specs = config.get('stage_configs') or f'{folder}/{{stage}}.py:{{geometry}}'
  return specs.format(stage=stage, geometry=geometry)


def dependency_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """The config of `stage` (`dependency_spec`), sharing workdir, seed and data sizes.

  Its own `then` is dropped: only the stage a user asked for continues to follow-up stages.
  """
  dep = config_lib.load_config(dependency_spec(config, stage))
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
  stage) replaces the default init stage (a folder's model leaves the world's data still to
  read), a user tokenizer (with user data) replaces the mini
  'world', and imported human rankings replace 'sample'."""
  supplied, instead = set(), ()
  init_from = str(config.get('init_from', ''))
  default_init = INIT_STAGES.get(config.stage)
  if default_init and init_from != default_init:
    supplied.add(default_init)
    if init_from in NEEDS and init_from not in NEEDS[config.stage]:
      instead = (init_from,)  # another stage's model (a recipe's RM starts from 'sft')
    elif init_from not in NEEDS:
      # A folder's model: the default init stage no longer leads to the world, whose data and
      # tokenizer every training stage reads itself.
      instead = ('world',)
  if str(config.get('reward_from') or 'rm') != 'rm':  # another folder's reward model
    supplied.add('rm')
  data = config.get('data') or {}
  if data.get('tokenizer'):
    supplied.add('world')
  if data.get('rankings'):
    supplied.add('sample')
  if config.get('valid_prompts') and config.baseline_from in NEEDS:
    instead += (config.baseline_from,)
  return tuple(dict.fromkeys(n for n in NEEDS[config.stage] + instead if n not in supplied))


def inputs(config: ml_collections.ConfigDict) -> dict[str, pathlib.Path]:
  """Every folder whose output `config.stage` reads, by stage name (or absolute path for a
  folder given in the config): its `needs`, the folders named by `init_from`, `reward_from` and
  `baseline_from`, and for the eval stage the policies' stages that are complete."""
  sources = list(needs(config))
  for field in ('init_from', 'reward_from', 'baseline_from'):
    value = str(config.get(field) or '')
    if value and value not in NEEDS and not value.startswith('hf:'):
      sources.append(str(pathlib.Path(value).resolve()))
  if config.stage == 'eval':
    sources += list(eval_stage.policy_stages(config).values())
  folders = {source: (stage_dir(config.workdir, source) if source in NEEDS
                      else pathlib.Path(source)) for source in dict.fromkeys(sources)}
  return {source: folder for source, folder in folders.items()
          if checkpoint.is_complete(str(folder))}


def link_inputs(config: ml_collections.ConfigDict, source_workdir: str) -> list[str]:
  """Links into `config.workdir` every complete stage of `source_workdir` that `config.stage`
  reads (the eval stage: its policies too), directly or through its inputs, where the workdir has
  none: a sweep over one stage's settings then trains only that stage (and what follows it). The
  links are folders the workdir only reads; a stage run again in it (forced, or made stale)
  replaces its link, never the source. Returns the folders linked.

  Raises:
    WorkdirError: `source_workdir` is the workdir itself.
  """
  source = pathlib.Path(source_workdir).resolve()
  if source == pathlib.Path(config.workdir).resolve():
    raise WorkdirError(f'--reuse_from={source_workdir} is the workdir itself')
  wanted, todo = set(), list(needs(config))
  if config.stage == 'eval':  # it evaluates every policy whose stage is complete
    todo += [stage for stage in eval_stage.policy_stages(config).values() if stage in NEEDS]
  while todo:
    stage = todo.pop()
    if stage not in wanted:
      wanted.add(stage)
      todo.extend(NEEDS[stage])
  links = {stage_dir(config.workdir, stage): stage_dir(str(source), stage)
           for stage in NEEDS if stage in wanted}  # pipeline order
  links = {here: there for here, there in links.items()
           if not os.path.lexists(here) and checkpoint.is_complete(str(there))}

  def link():
    for here, there in links.items():
      here.parent.mkdir(parents=True, exist_ok=True)
      here.symlink_to(there, target_is_directory=True)
  _on_all_processes(link)
  return [here.name for here in links]


# Config fields naming an input stage -> the config's model block that loads that stage's model.
MODEL_INPUTS = {'init_from': 'model', 'baseline_from': 'model', 'reward_from': 'reward_model'}


def _loaded_stages(config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
  """(the field naming it, input stage, the config's model block) for each model `config.stage`
  loads from a stage of its workdir: the init, baseline and reward models it needs, the
  sample stage's policies, and the eval stage's policies whose stages are complete."""
  needed = needs(config)
  loaded = [(field, config.get(field), block) for field, block in MODEL_INPUTS.items()
            if config.get(field) in needed]
  if config.stage == 'sample':
    loaded += [('policies', name.strip(), 'model') for name in config.policies.split(',')
               if name.strip() in NEEDS]
  if config.stage == 'eval':
    named = [eval_stage.POLICY_STAGES.get(name.strip()) for name in config.policies.split(',')]
    loaded += [('policies', stage, 'model') for stage in named
               if stage in needed or (stage and summary(config.workdir, stage) is not None)]
  return list(dict.fromkeys(loaded))


def check_inputs(config: ml_collections.ConfigDict) -> None:
  """What a run of `config` checks before any input stage runs: the config (`config_lib.validate`)
  and those of its follow-up stages (`then`), and its fit to its inputs, completed or still to
  run with their configs (`dependency_config`): a model the stage loads from an input stage
  (`_loaded_stages`) has that stage's geometry, and the reward model's k_max holds every
  ranking (the label stage's files, or the sample stage's k_max when it is still to run).

  Raises:
    ConfigError: with a one-line message.
  """
  config_lib.validate(config)
  if config.stage not in NEEDS:
    raise config_lib.ConfigError(f'stage {config.stage!r} unknown; known: {", ".join(NEEDS)}')
  for follow_up in config.get('then', ()):
    config_lib.validate(dependency_config(config, follow_up))
  for field, stage, block in _loaded_stages(config):
    done = summary(config.workdir, stage)
    if done is None:
      model = dependency_config(config, stage).model
      where = dependency_spec(config, stage)
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
      sample_k = dependency_config(config, 'sample').k_max
      if sample_k > config.k_max:
        raise config_lib.ConfigError(
            f'k_max={config.k_max} but the sample stage ranks up to k_max={sample_k} '
            f'completions ({dependency_spec(config, "sample")})')


def run(config: ml_collections.ConfigDict, force: bool = False) -> dict:
  """Runs `config.stage` after any missing or stale inputs, then the stages in `config.then`.

  A complete stage is reused only for the config it was made with (otherwise a WorkdirError
  names the fields that differ; `force` trains it again) and only while the inputs it read are
  still the ones in the workdir: a stage whose input was made again since is run again, and so
  is every stage after it.

  The first call of a command counts the stages it runs ("stage k of n", `progress.Pipeline`).

  Returns:
    The summary of `config.stage`.

  Raises:
    ConfigError: `check_inputs` refuses the config, before anything runs.
  """
  outermost = not _pipelines
  if outermost:
    check_inputs(config)
    _pipelines.append(progress.Pipeline(
        plan(config, force), config.get('pipeline_geometry') or config.model.geometry))
  try:
    result = _run(config, force, compare_config=True)
    for follow_up in config.get('then', ()):
      # A follow-up (the main job's eval) is reused whatever config it was run with, as long as
      # its inputs are the same.
      _run(dependency_config(config, follow_up), force=False, compare_config=False)
    return result
  finally:
    if outermost:
      _pipelines.pop()


# The stage count of the command running now (a list so that nothing rebinds a global).
_pipelines: list[progress.Pipeline] = []


def plan(config: ml_collections.ConfigDict, force: bool = False) -> list[str]:
  """The stages `run(config, force)` is expected to run, in order: each missing input after its
  own missing inputs, the stage itself unless complete, then its follow-ups (`then`) with their
  missing inputs. Inputs made stale by a run are found only while running."""
  planned: list[str] = []

  def visit(config: ml_collections.ConfigDict, run_it: bool) -> None:
    for need in needs(config):
      if need not in planned and summary(config.workdir, need) is None:
        visit(dependency_config(config, need), True)
    if run_it and config.stage not in planned:
      planned.append(config.stage)

  visit(config, force or summary(config.workdir, config.stage) is None)
  for follow_up in config.get('then', ()):
    follow = dependency_config(config, follow_up)
    visit(follow, bool(planned) or summary(config.workdir, follow_up) is None)
  return planned


def _run(config: ml_collections.ConfigDict, force: bool, compare_config: bool) -> dict:
  """`config.stage` after its inputs: a missing one is run with its shipped config
  (`dependency_config`), a stale one again with its own."""
  stage = config.stage
  check_inputs(config)
  for need in needs(config):
    if summary(config.workdir, need) is None:
      print(f'[{stage}] input {need!r} missing in {config.workdir}: running it first', flush=True)
      run(dependency_config(config, need))
    else:
      _rerun_if_stale(config.workdir, need)
  return _run_stage(config, force, compare_config)


def _rerun_if_stale(workdir: str, stage: str) -> None:
  """Runs the complete stage `stage` again, with the config it was made with, when an input it
  read (directly or through its own inputs) was made again since."""
  recorded = provenance.read(stage_dir(workdir, stage))
  if recorded is None:
    return  # made before stages recorded their provenance: nothing to compare
  for source in recorded['inputs']:
    if source in NEEDS and summary(workdir, source) is not None:
      _rerun_if_stale(workdir, source)
  config = ml_collections.ConfigDict(recorded['config'])
  config.workdir = workdir
  if provenance.changed_inputs(recorded, inputs(config)):
    _run_stage(config, force=False, compare_config=False)


def _run_stage(config: ml_collections.ConfigDict, force: bool, compare_config: bool) -> dict:
  """Runs `config.stage` itself unless complete (or forced); writes and returns its summary.

  A complete stage is reused when its recorded inputs are the workdir's current ones, and (with
  `compare_config`) its recorded config is `config`; an interrupted one is resumed on the same
  terms, even when forced. The stage's folder is locked for the run (`_stage_lock`); a run that
  starts over sets the old output aside until it starts (`_starting`). The summary lists the
  records the stage's datasets dropped ('data_dropped', only when some were).

  Raises:
    WorkdirError: the folder holds a run of another config and `force` is not set.
  """
  stage = config.stage
  folder = stage_dir(config.workdir, stage)
  with _stage_lock(folder):
    _restore_set_aside(folder)
    done = summary(config.workdir, stage)
    recorded = provenance.read(folder)
    reads = inputs(config)
    changes = (provenance.config_changes(recorded, config)
               if recorded is not None and (compare_config or done is None) else [])
    if changes and not force:
      what = 'is complete' if done is not None else 'holds an interrupted run'
      raise WorkdirError(f'{folder} {what} with another config ({"; ".join(changes[:4])}'
                         f'{"; ..." if len(changes) > 4 else ""}): use another --workdir, or '
                         '--force to train it again')
    made_again = provenance.changed_inputs(recorded, reads) if recorded is not None else []
    if done is not None and not force and not made_again:
      print(f'[{stage}] already complete in {folder}', flush=True)
      if stage == 'eval':  # what a rerun of the main job is for: the table, again
        eval_stage.print_headline(folder)
      return done
    if made_again:
      print(f'[{stage}] {", ".join(made_again)} changed since {folder} was made: running it '
            'again', flush=True)
    # A forced run that was interrupted resumes: only a complete folder, another config or
    # other inputs make the run start over.
    start_over = done is not None or bool(changes) or bool(made_again) or (
        force and recorded is None)
    start = time.time()
    count = f'{_pipelines[-1].start(stage)}: ' if _pipelines else ''
    print(f'[{stage}] {count}running in {folder} on {device_banner()}', flush=True)

    def write_provenance():
      provenance.write(folder, provenance.record(config, reads))
    # A linked folder (`link_inputs`) is another workdir's: never rewritten in place.
    with _starting(folder, start_over and (stage not in SHARED_FOLDERS or folder.is_symlink()),
                   lambda: _on_all_processes(write_provenance)):
      with pipeline.collecting_drops() as dropped, metrics.wandb_run(
          str(folder), config.get('wandb_project'), f'{pathlib.Path(config.workdir).name}/{stage}',
          provenance.resolved(config)) as wandb_summary:
        result = RUNNERS[stage](config, folder)
        wandb_summary(result)
    if _pipelines:
      _pipelines[-1].finish(stage, time.time() - start)
    return _finish(config, folder, result, start, dropped)


def device_banner() -> str:
  """The devices a stage runs on, e.g. '8 x cpu (2 processes)' or '1 x NVIDIA H100 80GB HBM3'."""
  kind = jax.devices()[0].device_kind
  processes = f' ({jax.process_count()} processes)' if jax.process_count() > 1 else ''
  return f'{jax.device_count()} x {kind}{processes}'


def _finish(config: ml_collections.ConfigDict, folder: pathlib.Path, result: dict, start: float,
            dropped: list[dict]) -> dict:
  """Completes the summary of `config.stage`, writes it (marking the stage done), returns it."""
  stage = config.stage
  # 'finished' makes every completion's summary.json unique, which is how the stages that read
  # this one tell a new completion from the one they read (stages.provenance).
  result = dict(result, stage=stage, seconds=round(time.time() - start, 1),
                finished=datetime.datetime.now(datetime.timezone.utc).isoformat())
  if dropped:
    result['data_dropped'] = dropped
  if 'model' in config:  # later stages rebuild this stage's geometry from its summary
    result['model'] = config.model.to_dict()
  if 'checkpoint_step' in result:  # a training stage: its run in TensorBoard's HParams
    metrics.write_hparams(str(folder), provenance.resolved(config), result)
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
def _starting(folder: pathlib.Path, start_over: bool, on_start: Callable[[], None]):
  """Calls `on_start` once the run has started: when a training loop in `folder` has built its
  state (`loop.when_started`), or when the runner returns. Until then a failed run leaves nothing
  of its own, so `on_start` records the run (its provenance) only once it is one.

  A run that starts over moves the old folder aside (`.<name>.replaced`) and deletes it when the
  run starts; if the runner fails before that, its partial folder is dropped and the old output
  put back.
  """
  start_over = start_over and _as_process_0_sees(folder.exists())
  aside = _set_aside_path(folder)
  started = False

  def set_aside():
    folder.rename(aside)

  def remove_old():
    if aside.is_symlink():  # a stage linked from another workdir (`link_inputs`): not ours
      aside.unlink()
    else:
      shutil.rmtree(aside)

  def start():
    nonlocal started
    if not started:
      started = True
      if start_over:
        _on_all_processes(remove_old)
      on_start()
  if start_over:
    _on_all_processes(set_aside)
  try:
    with loop.when_started(str(folder), start):
      yield
  except BaseException:
    if start_over and not started:
      _restore_set_aside(folder)
    raise
  start()
