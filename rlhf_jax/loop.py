"""The host loop every stage runs: jit once, stream batches, log, evaluate, checkpoint, resume.

A step is any Python callable `(state, batch, rng) -> (state, metrics)`. For SFT and RM it is one
function jitted by `jit_step`; a PPO iteration is a plain function that calls two jitted ones
(make_experience, then ppo_step), so each phase stays separately timeable (see `timed`).

Per step n (counting from 0) the loop draws the next batch, puts it on the mesh, calls
`step_fn(state, batch, fold_in(base_rng, n))` and keeps the returned metrics on device. Only at
a log, eval or checkpoint step are they fetched: the losses of every step since the last fetch
are checked to be finite (a NaN or inf stops the run naming the first bad step, and the bad
state is never saved), then the logged step's metrics are written. After step n the state is
checkpointed with the data-iterator positions, so a rerun of the same command resumes exactly:
same state, same next batch, same rng, and metrics.jsonl identical to an uninterrupted run's.
SIGTERM or SIGINT ends the run after the current step with a checkpoint; a second signal acts
as usual (kills / KeyboardInterrupt).
"""
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rlhf_jax import checkpoint
from rlhf_jax import metrics as metrics_lib

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, Any]]]
_STATE_OUT = object()  # jit_step's default out_shardings: (state_shardings, unspecified)


class NonFiniteLoss(RuntimeError):
  """The loss became NaN or inf; the message names the step and the last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps. 0 disables eval / periodic checkpoints (one is still written
  at the end). A log is written every `log_every` steps and at `total_steps`."""
  total_steps: int
  log_every: int = 10
  eval_every: int = 0
  checkpoint_every: int = 0

  @classmethod
  def from_config(cls, config: Any, total_steps: int | None = None) -> 'Schedule':
    """From the fields every stage config shares (config_lib.base_config)."""
    return cls(total_steps or config.total_steps, config.log_every, config.eval_every,
               config.checkpoint_every)


@dataclasses.dataclass
class RunResult:
  """What `run` ends with.

  Attributes:
    state: the final state (on device, sharded).
    step: steps completed (also the last checkpoint's step).
    metrics: the last logged metrics (host floats), for summary.json.
    stopped_by: the signal number that interrupted the run, None when it ran to the end. The
      caller should then exit non-zero (e.g. 128 + stopped_by) without writing summary.json.
  """
  state: Any
  step: int
  metrics: dict[str, float]
  stopped_by: int | None = None


def jit_step(fn: Callable[..., Any], *, state_shardings: Any, batch_shardings: Any,
             extra_shardings: Sequence[Any] = (), donate_state: bool = True,
             out_shardings: Any = _STATE_OUT) -> Callable[..., Any]:
  """Jits `fn(state, *extras, batch, rng)` once, with explicit shardings and a donated state.

  Args:
    fn: the pure step with static configuration bound (functools.partial), e.g.
      `sft_step(state, batch, rng)`, `make_experience(state, frozen, prompts, rng)`,
      `ppo_step(state, exp, ptx, rng)`.
    state_shardings: shardings of the state (a tree, or one sharding for all leaves).
    batch_shardings: shardings of the batch (tree prefix), e.g. sharding.batch_sharding(mesh, 1).
    extra_shardings: one entry per extra argument (frozen params, an Experience): never donated.
    donate_state: reuse the state's buffers for the new state; False for a function that does
      not return the state (make_experience).
    out_shardings: default (state_shardings, compiler's choice for the metrics).

  Returns:
    The jitted function; it compiles on the first call and never again for the same shapes.
  """
  if out_shardings is _STATE_OUT:
    out_shardings = (state_shardings, None)
  in_shardings = (state_shardings, *extra_shardings, batch_shardings, None)
  return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=(0,) if donate_state else ())


def shard_batch(batch: Any, shardings: Any) -> Any:
  """Host numpy batch (this process's rows) -> global arrays laid out by `shardings` (prefix)."""
  def put(sharding, subtree):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), subtree)
  return jax.tree.map(put, shardings, batch,
                      is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def count_tokens(batch: Any) -> int:
  """Token positions in a host batch: the sizes of its 'tokens' arrays, padding included."""
  return sum(int(np.size(x)) for path, x in jax.tree_util.tree_leaves_with_path(batch)
             if getattr(path[-1], 'key', None) == 'tokens')


def timed(fn: Callable[..., Any], *args) -> tuple[Any, float]:
  """(fn(*args), seconds until its outputs are ready): for `time/*` metrics of PPO phases.

  Waiting serialises the phases, which is what measuring them separately costs.
  """
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


class _Stop:
  signum: int | None = None


@contextlib.contextmanager
def _stop_on_signals():
  """Turns the first SIGTERM / SIGINT into a request to stop after the current step."""
  stop = _Stop()
  if threading.current_thread() is not threading.main_thread():
    yield stop  # signal handlers can only be installed from the main thread
    return
  signums = (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in signums}

  def handler(signum, frame):
    del frame
    stop.signum = signum
    for s, h in previous.items():  # a second signal acts as it would have
      signal.signal(s, h)
  for s in signums:
    signal.signal(s, handler)
  try:
    yield stop
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


class _Perf:
  """Host-side throughput over the window since the last log (the first includes compilation)."""

  def __init__(self, flops_per_token: float | None):
    self.flops_per_token = flops_per_token
    self.peak = metrics_lib.peak_flops()
    self.tokens, self.steps, self.since = 0, 0, time.perf_counter()

  def add(self, tokens: int) -> None:
    self.tokens += tokens * jax.process_count()  # every process feeds its own rows
    self.steps += 1

  def window(self) -> dict[str, float]:
    now = time.perf_counter()
    seconds, self.since = now - self.since, now
    out = {'perf/tokens_per_sec': self.tokens / seconds, 'perf/steps_per_sec': self.steps / seconds}
    if self.flops_per_token and self.peak:
      out['perf/mfu'] = (out['perf/tokens_per_sec'] * self.flops_per_token
                         / (self.peak * jax.device_count()))
    self.tokens, self.steps = 0, 0
    return out


def _every(step: int, period: int) -> bool:
  return period > 0 and step % period == 0


@dataclasses.dataclass
class _Loop:
  """One run's moving parts; `train` is the loop body, the rest keeps it short."""
  step_fn: StepFn
  iterators: list[Any]
  ckpt: checkpoint.Checkpointer
  writer: metrics_lib.Writer
  progress: metrics_lib.Progress
  schedule: Schedule
  base_rng: jax.Array
  batch_shardings: Any
  loss_key: str
  eval_fn: Callable[[Any], Mapping[str, Any]] | None
  count_tokens: Callable[[Any], int]
  perf: _Perf

  def next_batch(self) -> Any:
    """The next batch (a tuple when there are several datasets), None when data runs out."""
    try:
      batches = [next(it) for it in self.iterators]
    except StopIteration:
      return None
    return batches[0] if len(batches) == 1 else tuple(batches)

  def check_finite(self, pending: list[tuple[int, Any]]) -> None:
    """Raises NonFiniteLoss at the first step in `pending` whose loss is NaN or inf."""
    for step, loss in zip([s for s, _ in pending], jax.device_get([l for _, l in pending])):
      if not np.isfinite(loss):
        raise NonFiniteLoss(
            f'step {step}: {self.loss_key} is {float(loss)}; stopped without saving it, the last '
            f'good checkpoint is step {self.ckpt.latest_step()} in {self.ckpt.directory}')
    pending.clear()

  def record(self, step: int, step_metrics: Mapping[str, Any], log: bool,
             evaluate: bool, state: Any) -> dict[str, float]:
    """Writes step `step`'s logged (and eval) metrics; returns the deterministic ones."""
    out = {}
    if log:
      out.update(metrics_lib.to_scalars(jax.device_get(dict(step_metrics))))
    if evaluate:
      out.update(metrics_lib.to_scalars(jax.device_get(dict(self.eval_fn(state)))))
    perf = self.perf.window() if log else {}
    self.writer.write(step, {**out, **perf})
    if log:
      self.progress.update(step, out.get(self.loss_key), perf['perf/tokens_per_sec'])
    return {k: v for k, v in out.items() if not metrics_lib.is_timing(k)}

  def train(self, state: Any, step: int, stop: _Stop, last: dict[str, float]) -> RunResult:
    """Steps from `step` to the end; `last` is what was logged last before `step`."""
    s, pending = self.schedule, []
    while step < s.total_steps and stop.signum is None:
      batch = self.next_batch()
      if batch is None:
        break
      self.perf.add(self.count_tokens(batch))
      rng = jax.random.fold_in(self.base_rng, step)
      state, step_metrics = self.step_fn(state, shard_batch(batch, self.batch_shardings), rng)
      step += 1
      pending.append((step, step_metrics[self.loss_key]))
      log = _every(step, s.log_every) or step == s.total_steps
      evaluate = self.eval_fn is not None and _every(step, s.eval_every)
      save = _every(step, s.checkpoint_every) or stop.signum is not None
      if log or evaluate or save:
        self.check_finite(pending)
      if log or evaluate:
        last = self.record(step, step_metrics, log, evaluate, state) or last
      if save:
        self.ckpt.save(step, state, self.iterators)
    self.check_finite(pending)
    self.ckpt.save(step, state, self.iterators)
    if stop.signum is not None and jax.process_index() == 0:
      print(f'\n{signal.Signals(stop.signum).name}: saved step {step} to {self.ckpt.directory}; '
            'rerun the same command to resume', file=sys.stderr)
    return RunResult(state, step, last, stop.signum)


def run(step_fn: StepFn, *, init_state: Callable[[], Any], abstract_state: Any,
        data: Any, stage_dir: str, base_rng: jax.Array, schedule: Schedule,
        fingerprint: Mapping[str, Any], batch_shardings: Any, loss_key: str,
        eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
        tokens_fn: Callable[[Any], int] = count_tokens, flops_per_token: float | None = None,
        keep: int = 3, wandb_project: str | None = None,
        config: Mapping[str, Any] | None = None) -> RunResult:
  """Trains `step_fn` from the latest checkpoint in `stage_dir` (or from `init_state()`).

  Args:
    step_fn: `(state, batch, rng) -> (state, metrics)`, built from `jit_step` functions.
    init_state: builds the initial sharded state; called only when there is no checkpoint.
    abstract_state: the state's ShapeDtypeStructs with shardings (checkpoint.with_shardings),
      the restore target.
    data: a grain IterDataset, or a tuple of them (the batch is then the tuple of batches).
    stage_dir: the stage's folder (checkpoints, metrics.jsonl, perf.jsonl, tensorboard/).
    base_rng: the run's key; step n gets fold_in(base_rng, n).
    schedule: total steps and the log / eval / checkpoint periods.
    fingerprint: checkpoint.fingerprint(config_lib.model_roles(config)); a checkpoint with
      another one is refused (checkpoint.CheckpointMismatch).
    batch_shardings: how batches are laid out (prefix of the batch tree).
    loss_key: the metric that must stay finite and is shown on the console, e.g. 'sft/loss'.
    eval_fn: `state -> metrics`, every `schedule.eval_every` steps; must not donate the state.
    tokens_fn: tokens in a host batch, for perf/tokens_per_sec.
    flops_per_token: training FLOPs per token, for perf/mfu (omitted when unknown).
    keep: checkpoints kept.
    wandb_project: also log to this W&B project when wandb is installed.
    config: stored with the W&B run.

  Returns:
    RunResult; `stopped_by` is set when a signal ended the run early.

  Raises:
    NonFiniteLoss: the loss became NaN or inf (the last good checkpoint is kept).
    checkpoint.CheckpointMismatch: the stage folder holds a checkpoint of another geometry.
  """
  datasets = tuple(data) if isinstance(data, (tuple, list)) else (data,)
  iterators = [iter(ds) for ds in datasets]
  ckpt = checkpoint.Checkpointer(stage_dir, fingerprint, keep=keep, num_data=len(iterators))
  writer = progress = None
  try:
    if ckpt.latest_step() is None:
      state, step = init_state(), 0
    else:
      state, step = ckpt.restore(abstract_state, iterators)
      if jax.process_index() == 0:
        print(f'resuming from step {step} ({ckpt.directory})', file=sys.stderr)
    writer = metrics_lib.Writer(stage_dir, step, wandb_project=wandb_project, config=config)
    progress = metrics_lib.Progress(schedule.total_steps, step)
    loop = _Loop(step_fn, iterators, ckpt, writer, progress, schedule, base_rng, batch_shardings,
                 loss_key, eval_fn, tokens_fn, _Perf(flops_per_token))
    with _stop_on_signals() as stop:
      return loop.train(state, step, stop, writer.last_metrics)
  finally:
    ckpt.close()  # waits for the last asynchronous save
    for sink in (writer, progress):
      if sink is not None:
        sink.close()
