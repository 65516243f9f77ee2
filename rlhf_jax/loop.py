"""The host loop every stage runs: jit once, stream batches, log, evaluate, checkpoint, resume.

A step is any Python callable `(state, batch, rng) -> (state, metrics)`. For SFT and RM it is one
function jitted by `jit_step`; a PPO iteration is a plain function that calls three jitted ones
(generate, score, then ppo_step: `stages.ppo.phases`), so each phase stays separately timeable
(see `timed`).

Per step n (counting from 0) the loop draws the next batch, puts it on the mesh, calls
`step_fn(state, batch, fold_in(base_rng, n))` and keeps the returned metrics on device. Only at
a log, eval or checkpoint step are they fetched: the losses (and gradient norms) of every step
since the last fetch are checked to be finite, and optionally not to diverge. A bad value at step
n comes from the state after step n - 1, so the run stops naming step n, removes a checkpoint of
step n - 1 and never saves a later state; a state holding NaN or inf is never saved either. Then
the logged step's metrics are written. After step n the state is
checkpointed with the data-iterator positions, so a rerun of the same command resumes exactly:
same state, same next batch, same rng, and metrics.jsonl identical to an uninterrupted run's.
SIGTERM or SIGINT ends the run after the current step with a checkpoint; a second signal acts
as usual (kills / KeyboardInterrupt). With several processes a signal to any of them stops all
at one step they agree on (JAX's preemption sync point), so their joint save matches.
"""
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from rlhf_jax import checkpoint, sharding
from rlhf_jax import metrics as metrics_lib

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, Any]]]
_STATE_OUT = object()  # jit_step's default out_shardings: (state_shardings, unspecified)


class NonFiniteLoss(RuntimeError):
  """The loss (or the gradient norm) became NaN or inf or diverged, or the updated state holds
  NaN or inf; the message names the step and the last good checkpoint."""


# Absolute stage folder -> what to call once a run there has its state (see `when_started`).
_on_start: dict[str, Callable[[], None]] = {}


@contextlib.contextmanager
def when_started(stage_dir: str, callback: Callable[[], None]):
  """Has `run` in `stage_dir` call `callback()` once its state is built or restored, before the
  first step: past that point the run's inputs have been read and its setup has succeeded."""
  key = os.path.abspath(stage_dir)
  _on_start[key] = callback
  try:
    yield
  finally:
    _on_start.pop(key, None)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When things happen, in steps. 0 disables eval / periodic checkpoints (one is still written
  at the end). A log is written every `log_every` steps and at `total_steps`. With
  `divergence` > 0 the run also stops when the loss or gradient norm of a step exceeds that
  many times the running mean of its magnitude (a finite blow-up; 0 = off)."""
  total_steps: int
  log_every: int = 10
  eval_every: int = 0
  checkpoint_every: int = 0
  divergence: float = 0.0

  @classmethod
  def from_config(cls, config: Any, total_steps: int | None = None) -> 'Schedule':
    """From the fields every stage config shares (config_lib.base_config)."""
    return cls(total_steps or config.total_steps, config.log_every, config.eval_every,
               config.checkpoint_every, config.get('divergence', 0.0))


# Metrics every step is checked on besides the loss, when the step reports them.
GUARDED = ('learning/grad_norm',)


class _Guard:
  """Running mean of each guarded metric's magnitude, to catch finite blow-ups.

  The means start over when a run resumes: the guard only decides whether a run stops, never
  what it computes.
  """
  WARMUP = 20  # values averaged before the guard judges
  DECAY = 0.9

  def __init__(self, factor: float):
    self.factor = factor
    self.mean: dict[str, float] = {}
    self.seen: dict[str, int] = {}

  def check(self, name: str, value: float) -> str | None:
    """Why `value` of metric `name` stops the run, or None (then it joins the mean)."""
    if not np.isfinite(value):
      return f'{name} is {value}'
    if not self.factor:
      return None
    mean, seen = self.mean.get(name, 0.0), self.seen.get(name, 0)
    if seen >= self.WARMUP and abs(value) > self.factor * mean:
      return (f'{name} is {value:.4g}, {abs(value) / mean:.3g} times its running mean '
              f'magnitude {mean:.4g} (divergence={self.factor:g})')
    self.mean[name] = abs(value) if not seen else self.DECAY * mean + (1 - self.DECAY) * abs(value)
    self.seen[name] = seen + 1
    return None


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  """True when no floating-point leaf of `tree` holds NaN or inf."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


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
      `sft_step(state, batch, rng)`, `generate(state, prompts, rng)`,
      `ppo_step(state, exp, ptx, rng)`.
    state_shardings: shardings of the state (a tree, or one sharding for all leaves).
    batch_shardings: shardings of the batch (tree prefix), e.g. sharding.batch_sharding(mesh, 1).
    extra_shardings: one entry per extra argument (frozen params, an Experience): never donated.
    donate_state: reuse the state's buffers for the new state; False for a function that does
      not return the state (generate).
    out_shardings: default (state_shardings, compiler's choice for the metrics).

  Returns:
    The jitted function; it compiles on the first call and never again for the same shapes. It
    traces under the mesh of `state_shardings`, so the models' activation constraints apply.
  """
  if out_shardings is _STATE_OUT:
    out_shardings = (state_shardings, None)
  in_shardings = (state_shardings, *extra_shardings, batch_shardings, None)
  mesh = next(s.mesh for s in jax.tree.leaves(state_shardings)
              if isinstance(s, jax.sharding.NamedSharding))
  return jax.jit(sharding.traced_in_mesh(fn, mesh), in_shardings=in_shardings,
                 out_shardings=out_shardings, donate_argnums=(0,) if donate_state else ())


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
  """The signal that asked the run to stop, and whether the loop is waiting for data."""
  signum: int | None = None
  waiting_for_data: bool = False


class _DataWaitInterrupted(Exception):
  """A stop signal arrived while the loop waited for the next batch."""


class _Position:
  """A data iterator's position taken before a `next`, saved in its place (grain's checkpoint
  handler stores what `get_state` returns, as JSON bytes for objects that are not iterators)."""

  def __init__(self, iterator: Any):
    self._state = json.dumps(iterator.get_state(), indent=4).encode()

  def get_state(self) -> bytes:
    return self._state


def _stop_is_agreed() -> bool:
  """Whether the processes of this run agree on the step a signal stops them at (several
  processes under JAX's preemption service); otherwise each stops on its own signal."""
  return (jax.process_count() > 1
          and jax_distributed.global_state.preemption_sync_manager is not None)


@contextlib.contextmanager
def _stop_on_signals():
  """Turns the first SIGTERM / SIGINT into a request to stop after the current step.

  A signal that arrives while the loop waits for data (a slow or starved input pipeline) ends
  the wait at once (`_DataWaitInterrupted`), so it is never left pending behind a `next`.
  """
  stop = _Stop()
  if threading.current_thread() is not threading.main_thread():
    yield stop  # signal handlers can only be installed from the main thread
    return
  agreed = _stop_is_agreed()
  # With several processes SIGTERM is left to JAX's preemption service, whose handler tells
  # every process; they stop together at the step `reached_preemption_sync_point` names. A
  # SIGINT is passed on to it as a SIGTERM.
  signums = (signal.SIGINT,) if agreed else (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in signums}

  def handler(signum, frame):
    del frame
    for s, h in previous.items():  # a second signal acts as it would have
      signal.signal(s, h)
    if agreed:
      os.kill(os.getpid(), signal.SIGTERM)
      return
    stop.signum = signum
    if stop.waiting_for_data:
      raise _DataWaitInterrupted()
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
  guard: _Guard
  agreed_stop: bool

  def next_batch(self, stop: _Stop) -> tuple[Any, list[Any] | None]:
    """(the next batch, None), the batch a tuple when there are several datasets.

    When data runs out: (None, None). When a stop signal interrupts the wait: (None, the
    iterators' positions before it), to be checkpointed instead of the half-advanced iterators.
    """
    positions = [_Position(it) for it in self.iterators]
    try:
      stop.waiting_for_data = stop.signum is None
      batches = [next(it) for it in self.iterators]
      stop.waiting_for_data = False
    except StopIteration:
      stop.waiting_for_data = False
      return None, None
    except _DataWaitInterrupted:
      return None, positions
    return (batches[0] if len(batches) == 1 else tuple(batches)), None

  def check_pending(self, pending: list[tuple[int, dict[str, Any]]]) -> None:
    """Stops the run (`stop_bad`) at the first step in `pending` whose loss or gradient norm is
    NaN or inf, or diverged (`_Guard`)."""
    for step, values in zip([s for s, _ in pending], jax.device_get([v for _, v in pending])):
      for name, value in values.items():
        if (why := self.guard.check(name, float(value))) is not None:
          self.stop_bad(step, f'{why}, computed from the state after step {step - 1}', step - 1)
    pending.clear()

  def stop_bad(self, step: int, why: str, bad_from: int) -> None:
    """Raises NonFiniteLoss for step `step`, first removing the checkpoints from step
    `bad_from` on (states known to be bad) so a rerun resumes from a good one."""
    self.ckpt.wait()
    removed = [s for s in self.ckpt.all_steps() if s >= bad_from]
    for bad in removed:
      self.ckpt.delete(bad)
    kept = self.ckpt.latest_step()
    raise NonFiniteLoss(
        f'step {step}: {why}; stopped without saving it'
        + (f' and removed checkpoint {", ".join(map(str, removed))}' if removed else '')
        + (f'; the last good checkpoint is step {kept} in {self.ckpt.directory}' if kept is not None
           else f'; no checkpoint is left in {self.ckpt.directory}, a rerun starts over'))

  def save(self, step: int, state: Any, positions: Sequence[Any]) -> None:
    """Checkpoints `state` after step `step`, unless it holds NaN or inf (then stops the run)."""
    if step != self.ckpt.latest_step() and not bool(_all_finite(state)):
      self.stop_bad(step, 'the updated state holds NaN or inf', step)
    self.ckpt.save(step, state, positions)

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
      self.progress.update(step, out.get(self.loss_key), perf['perf/tokens_per_sec'],
                           metrics_lib.console_values(out))
    return {k: v for k, v in out.items() if not metrics_lib.is_timing(k)}

  def train(self, state: Any, step: int, stop: _Stop, last: dict[str, float]) -> RunResult:
    """Steps from `step` to the end; `last` is what was logged last before `step`."""
    s, pending = self.schedule, []
    data_positions = self.iterators
    while step < s.total_steps and stop.signum is None:
      batch, interrupted_at = self.next_batch(stop)
      if batch is None:
        data_positions = interrupted_at or data_positions
        break
      self.perf.add(self.count_tokens(batch))
      rng = jax.random.fold_in(self.base_rng, step)
      state, step_metrics = self.step_fn(state, shard_batch(batch, self.batch_shardings), rng)
      step += 1
      if self.agreed_stop and multihost_utils.reached_preemption_sync_point(step):
        stop.signum = signal.SIGTERM  # a process was signalled; all save this same step
      pending.append((step, {k: step_metrics[k] for k in (self.loss_key, *GUARDED)
                             if k in step_metrics}))
      log = _every(step, s.log_every) or step == s.total_steps
      evaluate = self.eval_fn is not None and _every(step, s.eval_every)
      save = _every(step, s.checkpoint_every) or stop.signum is not None
      if log or evaluate or save:
        self.check_pending(pending)
      if log or evaluate:
        last = self.record(step, step_metrics, log, evaluate, state) or last
      if save:
        self.save(step, state, self.iterators)
    self.check_pending(pending)
    self.save(step, state, data_positions)
    if stop.signum is not None and jax.process_index() == 0:
      print(f'\n{signal.Signals(stop.signum).name}: saved step {step} to {self.ckpt.directory}; '
            'rerun the same command to resume', file=sys.stderr)
    return RunResult(state, step, last, stop.signum)


def run(step_fn: StepFn, *, init_state: Callable[[], Any], abstract_state: Any,
        data: Any, stage_dir: str, base_rng: jax.Array, schedule: Schedule,
        fingerprint: Mapping[str, Any], batch_shardings: Any, loss_key: str,
        eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
        tokens_fn: Callable[[Any], int] = count_tokens, flops_per_token: float | None = None,
        keep: int = 3) -> RunResult:
  """Trains `step_fn` from the latest checkpoint in `stage_dir` (or from `init_state()`).

  Args:
    step_fn: `(state, batch, rng) -> (state, metrics)`, built from `jit_step` functions.
    init_state: builds the initial sharded state; called only when there is no checkpoint.
    abstract_state: the state's ShapeDtypeStructs with shardings (sharding.with_shardings),
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

  Returns:
    RunResult; `stopped_by` is set when a signal ended the run early.

  Raises:
    NonFiniteLoss: the loss or gradient norm became NaN or inf or diverged, or the state did;
      checkpoints of states that produced it are removed, the last good one is kept.
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
    _on_start.pop(os.path.abspath(stage_dir), lambda: None)()
    writer = metrics_lib.Writer(stage_dir, step)
    progress = metrics_lib.Progress(schedule.total_steps, step)
    loop = _Loop(step_fn, iterators, ckpt, writer, progress, schedule, base_rng, batch_shardings,
                 loss_key, eval_fn, tokens_fn, _Perf(flops_per_token),
                 _Guard(schedule.divergence), _stop_is_agreed())
    with _stop_on_signals() as stop:
      return loop.train(state, step, stop, writer.last_metrics)
  finally:
    ckpt.close()  # waits for the last asynchronous save
    for sink in (writer, progress):
      if sink is not None:
        sink.close()
