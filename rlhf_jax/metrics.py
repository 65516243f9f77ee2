"""Metric names and writers: metrics.jsonl, TensorBoard event files, W&B, console progress.

Names follow lm-human-preferences (DESIGN.md, "Metric names"): `sft/loss`, `rm/loss`,
`rm/accuracy`, `objective/kl`, `ppo/policy/clipfrac`, ..., `ptx/loss`. Names under `perf/` and
`time/` measure wall-clock time, so they differ between two runs of the same command: they go to
`<stage_dir>/perf.jsonl` (and TensorBoard), never to `<stage_dir>/metrics.jsonl`, which holds
only what the computation determines and is therefore identical between an interrupted-and-resumed
run and an uninterrupted one.

Both JSONL files hold one object per logged step, `{"step": n, name: float, ...}`. On resume from
step n the lines with step > n are dropped first (they were written after the checkpoint that is
being resumed and will be written again). Only process 0 writes anything.

With a W&B project set (`wandb_run`), every sink of the stage also logs to that stage's W&B run.
"""
import contextlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax
import numpy as np

from rlhf_jax import atomic, config_lib

TIMING_PREFIXES = ('perf/', 'time/')
METRICS_FILE = 'metrics.jsonl'
PERF_FILE = 'perf.jsonl'
ROLLOUTS_FILE = 'rollouts.jsonl'
TENSORBOARD_DIR = 'tensorboard'
WANDB_ID_FILE = 'wandb_run_id'

# Dense bf16 peak FLOP/s per device, for perf/mfu; matched as a prefix of jax's device_kind.
# Keyed by the start of `device_kind`; the longest matching key wins. v5p chips report
# 'TPU v5' and v5e chips 'TPU v5 lite'.
PEAK_FLOPS = {
    'TPU v4': 275e12, 'TPU v5': 459e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v6 lite': 918e12, 'TPU v6e': 918e12, 'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12,
    'NVIDIA A100': 312e12, 'NVIDIA B200': 2250e12,
}


# Shown on the console beside the loss when a step logs them: a PPO run's reward and KL.
CONSOLE = {'objective/scores': 'reward', 'objective/kl': 'KL'}


def console_values(scalars: Mapping[str, float]) -> dict[str, float]:
  """The CONSOLE metrics among `scalars`, by their console label."""
  return {label: scalars[name] for name, label in CONSOLE.items() if name in scalars}


def is_timing(name: str) -> bool:
  """True for wall-clock metrics, which differ from run to run."""
  return name.startswith(TIMING_PREFIXES)


def peak_flops(device: Any = None) -> float | None:
  """Peak bf16 FLOP/s of one device (default: the first), None when unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  matches = [key for key in PEAK_FLOPS if kind.startswith(key)]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats from scalar arrays or numbers; raises ValueError naming a non-scalar metric."""
  out = {}
  for name, value in metrics.items():
    value = np.asarray(value)
    if value.size != 1:
      raise ValueError(f'metric {name!r} has shape {value.shape}; metrics must be scalars')
    out[name] = float(value.reshape(()))
  return out


def _is_writer() -> bool:
  return jax.process_index() == 0


class JsonlLog:
  """Appends `{"step": n, ...}` lines to one file, after dropping lines past `resume_step`.

  Attributes:
    last: the last kept line without its step (the metrics logged last before the resume), {}
      for a fresh log.
  """

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.last = {}
    if os.path.exists(path):
      with open(path) as f:
        # A process killed while writing leaves its last line without the newline (and
        # possibly cut inside the JSON): that step is not covered by any checkpoint, so it
        # is dropped with the lines past the resumed step.
        complete = f.read().split('\n')[:-1]
      kept = []
      for line in complete:
        if line.strip() and (entry := json.loads(line))['step'] <= resume_step:
          kept.append(line + '\n')
          self.last = {k: v for k, v in entry.items() if k != 'step'}
      # Rewritten atomically so a crash here cannot leave a half-written log.
      atomic.write_lines(path, kept)
    self._file = open(path, 'a')

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if scalars:
      self._file.write(json.dumps({'step': step, **scalars}) + '\n')
      # Flushed per line: the lines must be on disk before the checkpoint that follows them.
      self._file.flush()

  def close(self) -> None:
    self._file.close()


class Writer:
  """All metric sinks of one stage: metrics.jsonl, perf.jsonl, TensorBoard.

  Args:
    stage_dir: the stage's folder, e.g. <workdir>/sft.
    resume_step: the step the run restarts from (0 for a fresh run): later lines are dropped
      and TensorBoard is told to purge its later events.
  """

  def __init__(self, stage_dir: str, resume_step: int = 0):
    self._active = _is_writer()
    if not self._active:
      return
    os.makedirs(stage_dir, exist_ok=True)
    self._metrics = JsonlLog(os.path.join(stage_dir, METRICS_FILE), resume_step)
    self._perf = JsonlLog(os.path.join(stage_dir, PERF_FILE), resume_step)
    import tensorboardX  # pylint: disable=g-import-not-at-top  # only process 0 needs it
    self._tb = tensorboardX.SummaryWriter(os.path.join(stage_dir, TENSORBOARD_DIR),
                                          purge_step=resume_step + 1, flush_secs=30)

  @property
  def last_metrics(self) -> dict[str, float]:
    """The deterministic metrics logged last at or before the resumed step ({} on process > 0):
    what a run resumed at its final step reports, since it logs nothing itself."""
    return dict(self._metrics.last) if self._active else {}

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs the scalar metrics of one step (device arrays are fetched here)."""
    if not self._active or not metrics:
      return
    scalars = to_scalars(jax.device_get(dict(metrics)))
    self._metrics.write(step, {k: v for k, v in scalars.items() if not is_timing(k)})
    self._perf.write(step, {k: v for k, v in scalars.items() if is_timing(k)})
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    if _wandb_runs:
      _wandb_runs[-1].log(scalars, step=step)

  def close(self) -> None:
    if not self._active:
      return
    self._metrics.close()
    self._perf.close()
    self._tb.close()


def _hparams(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
  """The config's fields by dotted name, as TensorBoard and W&B take them (lists as JSON)."""
  return {name: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
          for name, value in config_lib.flat_fields(config).items()}


def write_hparams(stage_dir: str, config: Mapping[str, Any], summary: Mapping[str, Any]) -> None:
  """Records a finished training stage in TensorBoard's HParams dashboard (<stage_dir>/
  tensorboard/hparams): the config's fields, flattened to dotted names, against the summary's
  numbers (its final validation and test figures among them; the wall time left out), so the
  runs of a sweep compare side by side. Process 0 writes; others return."""
  if not _is_writer():
    return
  import tensorboardX  # pylint: disable=g-import-not-at-top  # only process 0 needs it
  with tensorboardX.SummaryWriter(os.path.join(stage_dir, TENSORBOARD_DIR)) as writer:
    writer.add_hparams(_hparams(config), summary_numbers(summary), name='hparams')


def summary_numbers(summary: Mapping[str, Any]) -> dict[str, float]:
  """The numbers of a stage summary that describe its result (the wall time left out)."""
  return {name: float(value) for name, value in summary.items()
          if name != 'seconds' and isinstance(value, (int, float)) and not isinstance(value, bool)}


# The W&B run of the stage running now (at most one; a list so that nothing rebinds a global).
_wandb_runs: list[Any] = []


@contextlib.contextmanager
def wandb_run(stage_dir: str, project: str, name: str, config: Mapping[str, Any]):
  """Logs the stage running in `stage_dir` to W&B while open, when `project` is set (process 0).

  Every Writer and RolloutTable of the stage logs to the run; its config is `config` flattened
  to dotted names. Yields `summarize(summary)`, which records the stage summary's numbers as the
  run's summary (a no-op without W&B). The run's id is kept in <stage_dir>/wandb_run_id, so a
  resumed stage continues its run and a stage that starts over (a fresh folder) gets a new one.
  W&B's own files go to <stage_dir>/wandb; its usual variables apply (WANDB_MODE=offline,
  WANDB_ENTITY, WANDB_API_KEY).
  """
  if not project or not _is_writer():
    yield lambda summary: None
    return
  import wandb  # pylint: disable=g-import-not-at-top  # the optional [wandb] extra
  os.makedirs(stage_dir, exist_ok=True)
  id_path = os.path.join(stage_dir, WANDB_ID_FILE)
  if os.path.exists(id_path):
    run_id = open(id_path).read().strip()
  else:
    run_id = secrets.token_hex(8)
    atomic.write_lines(id_path, [run_id + '\n'])
  run = wandb.init(project=project, id=run_id, resume='allow', name=name, dir=stage_dir,
                   config=_hparams(config))
  _wandb_runs.append(run)
  try:
    yield lambda summary: run.summary.update(summary_numbers(summary))
  finally:
    _wandb_runs.remove(run)
    run.finish()


class RolloutTable:
  """A table of sampled rollouts (prompt, response, score, KL) logged every `every` PPO
  iterations: a line `{"step": n, "rows": [...]}` of <stage_dir>/rollouts.jsonl, TensorBoard
  text, and a W&B table in the stage's W&B run. Only process 0 writes.

  A resumed run drops the lines it is about to write again (those from its first logged
  iteration on), as metrics.jsonl does.
  """
  COLUMNS = ('prompt', 'response', 'score', 'kl')

  def __init__(self, stage_dir: str, every: int):
    self.every = every
    self._stage_dir = stage_dir
    self._log = self._tb = None

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def write(self, step: int, rows: list[Mapping[str, Any]]) -> None:
    """Logs the rows of iteration `step`; each row has the COLUMNS."""
    if not _is_writer():
      return
    if self._log is None:
      self._log = JsonlLog(os.path.join(self._stage_dir, ROLLOUTS_FILE), step - 1)
      import tensorboardX  # pylint: disable=g-import-not-at-top  # only process 0 needs it
      self._tb = tensorboardX.SummaryWriter(os.path.join(self._stage_dir, TENSORBOARD_DIR),
                                            flush_secs=30)
    rows = [{c: row[c] for c in self.COLUMNS} for row in rows]
    self._log.write(step, {'rows': rows})
    self._tb.add_text('rollouts', _markdown_table(self.COLUMNS, rows), step)
    if _wandb_runs:
      import wandb  # pylint: disable=g-import-not-at-top  # the optional [wandb] extra
      table = wandb.Table(columns=list(self.COLUMNS),
                          data=[[row[c] for c in self.COLUMNS] for row in rows])
      _wandb_runs[-1].log({'rollouts': table}, step=step)

  def close(self) -> None:
    for sink in (self._log, self._tb):
      if sink is not None:
        sink.close()


def _markdown_table(columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> str:
  """Rows as a markdown table (TensorBoard renders text summaries as markdown)."""
  def cell(value):
    text = f'{value:.3f}' if isinstance(value, float) else str(value)
    return text.replace('|', '\\|').replace('\n', ' ')
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  return '\n'.join(lines + ['| ' + ' | '.join(cell(r[c]) for c in columns) + ' |' for r in rows])


def duration(seconds: float) -> str:
  """'1h05m' or '4m07s'."""
  seconds = int(seconds)
  h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class Progress:
  """Console progress: step/total, loss, tokens/s, ETA.

  On a terminal one line is rewritten in place; otherwise (log files, CI) a plain line is
  printed on each update, which the loop calls once per logged step.
  """

  def __init__(self, total_steps: int, start_step: int = 0, stream: TextIO | None = None):
    self.total = total_steps
    self.stream = stream or sys.stderr
    self._active = _is_writer()
    self._tty = self.stream.isatty()
    self._start = (start_step, time.perf_counter())

  def update(self, step: int, loss: float | None = None, tokens_per_sec: float | None = None,
             values: Mapping[str, float] | None = None):
    """Shows `step`, its loss, `values` (label -> value, e.g. console_values) and tokens/s."""
    if not self._active:
      return
    parts = [f'step {step}/{self.total}']
    if loss is not None:
      parts.append(f'loss {loss:.4f}' if math.isfinite(loss) else f'loss {loss}')
    parts += [f'{label} {value:.3f}' for label, value in (values or {}).items()]
    if tokens_per_sec is not None:
      parts.append(f'{tokens_per_sec:,.0f} tokens/s')
    start_step, start_time = self._start
    if step > start_step:
      rate = (step - start_step) / (time.perf_counter() - start_time)
      parts.append(f'ETA {duration((self.total - step) / rate)}')
    line = '  '.join(parts)
    self.stream.write(f'\r\033[K{line}' if self._tty else line + '\n')
    self.stream.flush()

  def close(self) -> None:
    if self._active and self._tty:
      self.stream.write('\n')
      self.stream.flush()
