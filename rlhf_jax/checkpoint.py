"""Checkpoints of a stage (orbax): sharded state, data-iterator positions, a geometry fingerprint.

Layout of a stage folder:

  <stage_dir>/checkpoints/<step>/state   the state pytree (orbax PyTree, sharded arrays)
  <stage_dir>/checkpoints/<step>/meta    JSON: step, fingerprint (model geometry and head per role)
  <stage_dir>/checkpoints/<step>/data_i  grain iterator position of dataset i, one file per process
  <stage_dir>/summary.json               written last: only a stage with it is complete

A checkpoint is restored only into a config with the same fingerprint, and every array's shape
is checked against the target before any is read, so a wrong geometry is a one-line
`CheckpointMismatch` naming the checkpoint and the field, never a shape traceback.

`meta` also holds a checksum of every array (`checksums`), and a restore recomputes them from
the arrays it read: a checkpoint whose files were cut short or altered fails to read or to match.
Resuming then falls back to the newest intact checkpoint (the bad one is moved to
<stage_dir>/corrupt_checkpoints/<step>) or, when none is left, stops with a one-line
`CheckpointCorrupt`. Checkpoints written before checksums existed are restored unverified.
"""
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grain.checkpoint as grain_checkpoint
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rlhf_jax import atomic, sharding

CHECKPOINT_DIR = 'checkpoints'
SUMMARY_FILE = 'summary.json'
STATE, META = 'state', 'meta'
CORRUPT_DIR = 'corrupt_checkpoints'
# ModelConfig fields that decide parameter shapes and structure. Dropout, dtype, remat and
# rotary constants may change between runs without invalidating a checkpoint.
GEOMETRY_FIELDS = ('vocab_size', 'n_layers', 'd_model', 'n_heads', 'kv_heads', 'd_head', 'd_ff',
                   'max_len', 'norm', 'positions', 'mlp', 'use_bias', 'qkv_bias', 'tie_embeddings')


class CheckpointMismatch(ValueError):
  """A checkpoint that does not fit the config; the message is one line naming path and field."""


class CheckpointCorrupt(ValueError):
  """A checkpoint that cannot be read or does not match its checksums, with no intact one to
  fall back to; the message is one line naming the step and what to delete."""


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """[] uint32: sum over elements of (bits of the element) x (an odd weight from its position),
  modulo 2**32. Any single flipped bit changes it; the order of the sum does not."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)  # 8 bytes: [..., 2]
  position, stride = jnp.zeros(bits.shape, jnp.uint32), 1
  for axis in reversed(range(bits.ndim)):
    position += jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride)
    stride = stride * bits.shape[axis] % 2**32
  return jnp.sum(bits * (2 * position + 1), dtype=jnp.uint32)


@jax.jit
def _checksums(tree: Any) -> dict[str, jax.Array]:
  """{array path: checksum} of every array of `tree`, computed where the arrays live."""
  return {_path_str(path): _leaf_checksum(x)
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _verify(step: int, stored: Mapping[str, Any], tree: Any) -> None:
  """Raises ValueError naming the first array of `tree` whose checksum differs from `stored`'s."""
  expected = stored.get('checksums')
  if not expected:
    return  # written before checksums were kept
  for name, value in sorted(jax.device_get(_checksums(tree)).items()):
    if name in expected and int(value) != expected[name]:
      raise ValueError(f'array {name} of step {step} does not match its checksum')


def _one_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {lines[0] if lines else ""}'[:300]


def fingerprint(roles: Mapping[str, tuple[Any, str]]) -> dict[str, Any]:
  """{'<role>.head': head, '<role>.<field>': value} for config_lib.model_roles(config)."""
  out = {}
  for role, (model, head) in sorted(roles.items()):
    out[f'{role}.head'] = head
    out.update({f'{role}.{name}': getattr(model, name) for name in GEOMETRY_FIELDS})
  return out


def _path_str(path: tuple) -> str:
  """'params/decoder/w' for any key path (dataclass fields, dict keys, tuple indices)."""
  names = (getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
  return '/'.join(str(n) for n in names)


def _check_shapes(directory: str, stored: Any, target: Any, *, partial: bool) -> None:
  """Raises CheckpointMismatch unless `stored` metadata holds every target array, same shape.

  Unless `partial`, the checkpoint must also hold no array the target lacks.
  """
  shapes = {_path_str(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(stored)}
  names = [_path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(target)]
  extra = sorted(set(shapes) - set(names))
  if extra and not partial:
    raise CheckpointMismatch(f'{directory}: has array {extra[0]} that the config\'s state lacks; '
                             'it was written by a different model or state layout')
  for name, leaf in zip(names, jax.tree.leaves(target)):
    if name not in shapes:
      raise CheckpointMismatch(f'{directory}: has no array {name}; it was written by a different '
                               'model or state layout')
    if shapes[name] != tuple(leaf.shape):
      raise CheckpointMismatch(f'{directory}: {name} has shape {shapes[name]}, the config needs '
                               f'{tuple(leaf.shape)}')


def _check_fingerprint(directory: str, stored: Mapping[str, Any],
                       expected: Mapping[str, Any]) -> None:
  for key in sorted(set(stored) | set(expected)):
    if stored.get(key) != expected.get(key):
      raise CheckpointMismatch(f'{directory}: checkpoint has {key}={stored.get(key)!r}, the '
                               f'config has {key}={expected.get(key)!r}; use a fresh workdir '
                               'or the original config')


def _manager(directory: str, num_data: int, keep: int | None = None, read_only: bool = False):
  handlers = {STATE: ocp.PyTreeCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
  handlers.update({f'data_{i}': grain_checkpoint.CheckpointHandler() for i in range(num_data)})
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, read_only=read_only,
                                         create=not read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def _restore_tree(manager, step: int, directory: str, target: Any, *, partial: bool) -> Any:
  """Restores `target`'s arrays (ShapeDtypeStructs with shardings) after checking shapes."""
  _check_shapes(directory, manager.item_metadata(step)[STATE].tree, target, partial=partial)
  restore = ocp.args.PyTreeRestore(target, partial_restore=partial,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(target))
  return manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))[STATE]


@dataclasses.dataclass
class Checkpointer:
  """Saves and restores one stage's state and data positions (async saves, keeps `keep`).

  All processes call every method (orbax coordinates them); each process saves and restores its
  own data-iterator positions.

  Attributes:
    stage_dir: the stage's folder; checkpoints go to <stage_dir>/checkpoints.
    fingerprint: `fingerprint(roles)` of the running config, stored and checked on restore.
    keep: how many checkpoints to keep (oldest deleted first).
    num_data: how many data iterators each checkpoint holds.
  """
  stage_dir: str
  fingerprint: Mapping[str, Any]
  keep: int = 3
  num_data: int = 1

  def __post_init__(self):
    self.directory = os.path.join(self.stage_dir, CHECKPOINT_DIR)
    self._manager = _manager(self.directory, self.num_data, self.keep)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def delete(self, step: int) -> None:
    """Removes the checkpoint of `step` (one known to hold a bad state)."""
    self._manager.delete(step)

  def save(self, step: int, state: Any, iterators: Sequence[Any] = ()) -> None:
    """Starts an asynchronous save; the arrays are copied off the devices before it returns."""
    if step == self.latest_step():
      return
    checksums = {name: int(value) for name, value in jax.device_get(_checksums(state)).items()}
    items = {STATE: ocp.args.PyTreeSave(state),
             META: ocp.args.JsonSave({'step': step, 'fingerprint': dict(self.fingerprint),
                                      'checksums': checksums})}
    items.update({f'data_{i}': grain_checkpoint.CheckpointSave(it)
                  for i, it in enumerate(iterators)})
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, iterators: Sequence[Any] = (),
              step: int | None = None) -> tuple[Any, int]:
    """Restores (state, step) from `step` (default: the newest intact checkpoint) and
    repositions `iterators`.

    Without `step`, a checkpoint that fails to read or to match its checksums is moved to
    <stage_dir>/corrupt_checkpoints/ with a warning and the next older one is tried.

    Args:
      abstract_state: the target, ShapeDtypeStructs with shardings (`sharding.with_shardings`).
      iterators: fresh grain DatasetIterators of the same datasets, set in place.
      step: which checkpoint; None for the newest intact one.

    Raises:
      CheckpointMismatch: the checkpoint's fingerprint or array shapes differ from the config.
      CheckpointCorrupt: `step`, or every checkpoint, is corrupt.
      FileNotFoundError: there is no checkpoint.
    """
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    for i, candidate in enumerate(steps):
      try:
        return self._restore_step(candidate, abstract_state, iterators), candidate
      except CheckpointMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except  # any failure to read or verify
        path, reason = os.path.join(self.directory, str(candidate)), _one_line(e)
        if step is not None:
          raise CheckpointCorrupt(f'{path}: checkpoint {step} is corrupt ({reason}); delete '
                                  'it to resume from an earlier one') from None
        if i == len(steps) - 1:
          raise CheckpointCorrupt(
              f'{path}: checkpoint {candidate} is corrupt ({reason}) and no intact one is '
              f'left; delete {self.directory} to start the stage over') from None
        self._set_aside(candidate)
        if jax.process_index() == 0:
          print(f'warning: {path}: checkpoint {candidate} is corrupt ({reason}); moved to '
                f'{os.path.join(self.stage_dir, CORRUPT_DIR)}, trying the one before',
                file=sys.stderr)

  def _restore_step(self, step: int, abstract_state: Any, iterators: Sequence[Any]) -> Any:
    """The state of checkpoint `step`, verified; positions `iterators`."""
    path = os.path.join(self.directory, str(step))
    meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    _check_fingerprint(path, meta[META]['fingerprint'], self.fingerprint)
    state = _restore_tree(self._manager, step, path, abstract_state, partial=False)
    _verify(step, meta[META], state)
    if iterators:
      self._manager.restore(step, args=ocp.args.Composite(**{
          f'data_{i}': grain_checkpoint.CheckpointRestore(it) for i, it in enumerate(iterators)}))
    return state

  def _set_aside(self, step: int) -> None:
    """Moves checkpoint `step` out of the way (kept for inspection), on process 0."""
    if jax.process_index() == 0:
      corrupt = os.path.join(self.stage_dir, CORRUPT_DIR)
      os.makedirs(corrupt, exist_ok=True)
      target = os.path.join(corrupt, str(step))
      shutil.rmtree(target, ignore_errors=True)  # an earlier copy of the same step
      os.rename(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint: set aside {step}')
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until the last save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def load_params(stage_dir: str, abstract_params: Any, shardings: Any = None, *,
                field: str = 'params', fingerprint: Mapping[str, Any] | None = None) -> Any:
  """Another stage's final parameters (e.g. SFT's, to initialise the reward model).

  Only `state.<field>` is read, straight into its sharded layout: optimizer moments are never
  loaded. The checkpoint is the one summary.json names under 'checkpoint_step' (in the folder it
  names under 'params_from', default `checkpoints`), else the latest.

  Args:
    stage_dir: the completed stage's folder.
    abstract_params: the target tree (ShapeDtypeStructs), e.g. state.abstract_params(...).
    shardings: NamedShardings for it; None keeps the target's own `.sharding`.
    field: which field of the saved state holds the parameters; dots reach into nested states
      ('ema_params' or 'policy.params' of a PPOState).
    fingerprint: if given, the checkpoint's fingerprint entries of the same keys must match.

  Raises:
    FileNotFoundError: the stage is not complete.
    CheckpointMismatch: the checkpoint does not fit the target.
  """
  summary = read_summary(stage_dir)
  if summary is None:
    raise FileNotFoundError(f'{stage_dir}: stage not complete (no {SUMMARY_FILE})')
  # A stage that selects a checkpoint (SFT by validation metric) keeps it in its own folder.
  directory = os.path.join(stage_dir, summary.get('params_from', CHECKPOINT_DIR))
  manager = _manager(directory, num_data=0, read_only=True)
  step = summary.get('checkpoint_step', manager.latest_step())
  path = os.path.join(directory, str(step))
  target = (abstract_params if shardings is None
            else sharding.with_shardings(abstract_params, shardings))
  keys = field.split('.')
  for key in reversed(keys):
    target = {key: target}
  try:
    meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    if fingerprint is not None:
      stored = meta[META]['fingerprint']
      _check_fingerprint(path, {k: stored.get(k) for k in fingerprint}, fingerprint)
    params = _restore_tree(manager, step, path, target, partial=True)
    _verify(step, meta[META], params)
  except CheckpointMismatch:
    raise
  except Exception as e:  # pylint: disable=broad-except  # any failure to read or verify
    raise CheckpointCorrupt(f'{path}: checkpoint {step} is corrupt ({_one_line(e)}); rerun the '
                            f'stage in {stage_dir} with --force') from None
  finally:
    manager.close()
  for key in keys:
    params = params[key]
  return params


def write_summary(stage_dir: str, summary: Mapping[str, Any]) -> None:
  """Marks the stage complete (process 0 writes; atomic, so a crash never leaves half a file)."""
  if jax.process_index() != 0:
    return
  write_json(os.path.join(stage_dir, SUMMARY_FILE), dict(summary))


def write_json(path: str, value: Any) -> None:
  """Writes `value` as JSON atomically: a reader sees the old file or the whole new one."""
  atomic.write_lines(path, [json.dumps(value, indent=2, sort_keys=True)])


def read_summary(stage_dir: str) -> dict[str, Any] | None:
  """The stage's summary.json, or None when the stage is not complete."""
  path = os.path.join(stage_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_complete(stage_dir: str) -> bool:
  return os.path.exists(os.path.join(stage_dir, SUMMARY_FILE))
