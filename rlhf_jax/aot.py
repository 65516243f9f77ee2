"""Ahead-of-time fit check: compile every step of a stage for a target slice, from a CPU host.

  python -m rlhf_jax.aot --config=configs/ppo_ptx.py:175b [--topology=v5p:8x8x8] [--json]

Each step of the stage (sft_step; rm_step; PPO's generate, score and ppo_step with ptx) is the
jitted function the stage runs (`stages.program.program`, `stages.ppo.phases`: same model, same
shardings, same donation), lowered on abstract state and batches (nothing is allocated) and
compiled by XLA for the slice's devices (`jax.experimental.topologies`; TPU needs libtpu, the
`[tpu-aot]` extra). The compiler's memory analysis gives each device's argument, temporary and
output bytes; with the bytes held outside the step (PPO's frozen models during `ppo_step`) their
total is what the device needs, compared with its HBM. `--topology=local` compiles for the
devices of this machine instead (e.g. a GPU node), reading their memory limit from the runtime.

Without `--topology` the config's recommended `topology` is used. Not fitting is a result
(exit 0, `fits: false`); a topology that does not exist is a one-line error (exit 2).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax import config_lib, ppo, sharding, state
from rlhf_jax import main as main_lib
from rlhf_jax.data import pipeline
from rlhf_jax.stages import ppo as ppo_stage
from rlhf_jax.stages import program

flags.DEFINE_string('topology', None, "Target slice, e.g. 'v5p:8x8x8' (TPU topology names of "
                    "jax.experimental.topologies) or 'local'; default: the config's topology.")
flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
FLAGS = flags.FLAGS

GIB = 1024**3
# HBM per chip, matched as the longest prefix of jax's device_kind. TPU: Cloud TPU system
# architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e); GPU: NVIDIA data sheets
# (H100 SXM 80 GB, H200 141 GB, A100 40/80 GB). 'TPU v5' is v5p's device_kind.
HBM_PER_CHIP = {
    'TPU v4': 32 * GIB, 'TPU v5 lite': 16 * GIB, 'TPU v5': 95 * GIB, 'TPU v6 lite': 32 * GIB,
    'NVIDIA H100': 80 * GIB, 'NVIDIA H200': 141 * GIB, 'NVIDIA A100-SXM4-40GB': 40 * GIB,
    'NVIDIA A100': 80 * GIB,
}


class TopologyError(ValueError):
  """The topology name is not one the compiler knows; the message is one line."""


@dataclasses.dataclass
class Step:
  """One jitted step with abstract arguments, ready to lower.

  Attributes:
    fn: the jitted step (loop.jit_step).
    args: its arguments as ShapeDtypeStructs carrying shardings.
    held_bytes: per-device bytes that stay resident outside the step's own arguments.
  """
  fn: Callable[..., Any]
  args: tuple[Any, ...]
  held_bytes: int = 0


@contextlib.contextmanager
def _quiet_stderr():
  """Silences libtpu's start-up warnings (there is no TPU VM here); errors still raise."""
  saved = os.dup(2)
  with open(os.devnull, 'w') as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def topology_devices(name: str) -> list[Any]:
  """The devices of a named slice ('v5p:8x8x8'), or this machine's for 'local'."""
  if name == 'local':
    return jax.devices()
  # Compiling for a slice must not open (or wait for) a local accelerator: the CPU is the host.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  jax.config.update('jax_platforms', 'cpu')
  try:
    with _quiet_stderr():
      return list(topologies.get_topology_desc(platform='tpu', topology_name=name).devices)
  except Exception as e:  # libtpu missing, or a name it rejects: both are one line for the user
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TopologyError(f'topology {name!r}: {message}') from None


def hbm_per_device(devices: list[Any]) -> int | None:
  """Memory of one device: the runtime's limit on a real device, else the chip table."""
  device = devices[0]
  with contextlib.suppress(Exception):  # abstract topology devices have no memory_stats
    limit = (device.memory_stats() or {}).get('bytes_limit')
    if limit:
      return int(limit)
  kind = device.device_kind
  matches = [k for k in HBM_PER_CHIP if kind.startswith(k)]
  if not matches:
    return None
  # v4 topologies list both TensorCores of a chip as devices; they share its HBM.
  coords = [tuple(getattr(d, 'coords', ())) for d in devices]
  per_chip = max(1, len(coords) // max(1, len(set(coords))))
  return HBM_PER_CHIP[max(matches, key=len)] // per_chip


_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
# TPU compiles refuse a program that cannot fit; their message still says how much it needs.
_OOM_PATTERNS = (
    (re.compile(r'Used ([\d.]+)([KMGT])i?B? of [\d.]+[KMGT]i?B? hbm'), 'total'),
    (re.compile(r'required for HLO temporaries \(([\d.]+)([KMGT])i?B?\)'), 'temp'),
)


def _oom_bytes(message: str) -> tuple[str, int] | None:
  """('total' or 'temp', bytes) from a compile-time out-of-memory message, else None."""
  for pattern, kind in _OOM_PATTERNS:
    match = pattern.search(message)
    if match:
      return kind, int(float(match.group(1)) * _UNITS[match.group(2)])
  return None


def _device_bytes(x) -> int:
  """Bytes of one device's shard of an abstract array."""
  return int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize


def _compile(lowered, args) -> tuple[dict[str, int], float | None]:
  """(per-device memory parts, FLOPs); parts estimated from the message if it cannot fit."""
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    oom = _oom_bytes(str(e)) if 'RESOURCE_EXHAUSTED' in str(e) else None
    if oom is None:
      raise
    arg_bytes = sum(_device_bytes(x) for x in jax.tree.leaves(args))
    kind, n = oom
    return {'argument_bytes': arg_bytes, 'output_bytes': 0, 'alias_bytes': 0, 'code_bytes': 0,
            'temp_bytes': max(n - arg_bytes, 0) if kind == 'total' else n}, None
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
  return ({'argument_bytes': mem.argument_size_in_bytes, 'output_bytes': mem.output_size_in_bytes,
           'alias_bytes': mem.alias_size_in_bytes, 'temp_bytes': mem.temp_size_in_bytes,
           'code_bytes': mem.generated_code_size_in_bytes},
          None if cost.get('flops') is None else float(cost['flops']))


def measure(step: Step, hbm: int | None,
            programs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
  """Lowers and compiles one step; its per-device memory, FLOPs and compile time.

  Args:
    step: the step to check.
    hbm: one device's memory, or None if unknown.
    programs: measurements by program (a digest of the lowered program and its devices), shared
      across calls: a program measured before, such as sft_init's step (sft's, other data), is
      not compiled again. The `program` field of a result names its program.
  """
  start = time.perf_counter()
  lowered = step.fn.lower(*step.args)
  devices = sorted(str(d) for d in jax.tree.leaves(step.args)[0].sharding.device_set)
  program = hashlib.sha256((lowered.as_text() + repr(devices)).encode()).hexdigest()[:16]
  if programs is not None and program in programs:
    measured = dict(programs[program])
  else:
    parts, flops = _compile(lowered, step.args)
    measured = {'flops': flops, 'compile_seconds': round(time.perf_counter() - start, 1),
                'program': program, **{k: int(v) for k, v in parts.items()}}
    if programs is not None:
      programs[program] = measured
  measured['held_bytes'] = step.held_bytes
  # Donated arguments alias their outputs: those bytes are counted once.
  total = (measured['argument_bytes'] + measured['output_bytes'] - measured['alias_bytes']
           + measured['temp_bytes'] + measured['code_bytes'] + measured['held_bytes'])
  return {'bytes_per_device': total, 'hbm_per_device': hbm,
          'fits': None if hbm is None else bool(total <= hbm), **measured}


def _rng(mesh):
  key = jax.eval_shape(jax.random.key, 0)
  return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))


def _batch(mesh, kind: str, batch_size: int, config, leading: tuple[int, ...] = ()):
  """(abstract batch of `kind`, its sharding): rows over the batch axes, after `leading` dims."""
  spec = pipeline.batch_spec(kind, batch_size=batch_size, seq_len=config.data.seq_len,
                             prompt_len=config.data.prompt_len, k_max=config.get('k_max', 9))
  rows = NamedSharding(mesh, PartitionSpec(*(None,) * len(leading), sharding.BATCH_AXES))
  return {k: jax.ShapeDtypeStruct(leading + v.shape, v.dtype, sharding=rows)
          for k, v in spec.items()}, rows


def _supervised_steps(config, mesh) -> dict[str, Step]:
  """sft_step (pretrain, sft, sft_init and their _rm twins) or rm_step: the stage's program."""
  train = program.program(config, mesh, max(config.total_steps, 1))
  batch, _ = _batch(mesh, train.batch_kind, config.batch_size, config)
  return {train.name: Step(train.step, (train.abstract_state, batch, _rng(mesh)))}


def _ppo_steps(config, mesh) -> dict[str, Step]:
  """The three phases of a PPO iteration, jitted as stages/ppo.py jits them: generate (the
  sampler), score (policy, reference, RM and value forwards, GAE) and ppo_step (with ptx)."""
  vocab = config.model.real_vocab_size or config.model.vocab_size
  settings = ppo_stage.settings_from_config(config, eos_id=vocab - 1, pad_id=0)
  ppo_state, state_shardings = ppo.abstract_ppo_state(settings, mesh)
  frozen, frozen_shardings = sharding.abstract_sharded(
      lambda p, r: ppo.Frozen(p, r, jnp.zeros((), jnp.float32)), mesh,
      state.abstract_params(settings.policy_model, 'lm'),
      state.abstract_params(settings.reward_model, 'scalar'))
  prompts, _ = _batch(mesh, 'prompts', config.batch_size, config)
  prompts = {k: prompts[k] for k in ('tokens', 'mask')}
  generate, score, train, batch_shardings = ppo_stage.phases(settings, state_shardings,
                                                             frozen_shardings, mesh)
  rows = batch_shardings[0] if settings.ptx_coef else batch_shardings
  rng = _rng(mesh)
  sample = sharding.with_shardings(jax.eval_shape(generate, ppo_state, prompts, rng), rows)
  exp = sharding.with_shardings(jax.eval_shape(score, ppo_state, frozen, prompts, sample)[0], rows)
  ptx = None
  if settings.ptx_coef:
    ptx, _ = _batch(mesh, 'text', ppo_stage.ptx_rows(config), config,
                    leading=(settings.updates_per_iteration,))
    ptx = sharding.with_shardings({k: ptx[k] for k in ppo_stage.PTX_FIELDS}, batch_shardings[1])
  # The frozen models stay in HBM while the other phases run, though not their arguments.
  held = sum(_device_bytes(x) for x in jax.tree.leaves(frozen))
  return {'generate': Step(generate, (ppo_state, prompts, rng), held_bytes=held),
          'score': Step(score, (ppo_state, frozen, prompts, sample)),
          'ppo_step': Step(train, (ppo_state, exp, ptx, rng), held_bytes=held)}


def build_steps(config, mesh) -> dict[str, Step]:
  """The stage's steps by name, as its runner jits them."""
  if config.stage in config_lib.PPO_STAGES:
    return _ppo_steps(config, mesh)
  if config.stage in program.STAGES:
    return _supervised_steps(config, mesh)
  raise config_lib.ConfigError(f'stage {config.stage!r} has no training step to check')


def make_mesh(config, devices: list[Any]) -> Mesh:
  """The config's mesh over `devices`; a mesh the devices cannot form is a ConfigError."""
  try:
    return sharding.make_mesh(dict(config.mesh), devices)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None


def check(config, topology: str,
          programs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
  """The fit report of every step of `config.stage` on `topology` (see the module docstring);
  `programs` as in `measure`."""
  devices = topology_devices(topology)
  mesh = make_mesh(config, devices)
  config_lib.validate_batches(config, sharding.batch_size_multiple(mesh))
  hbm = hbm_per_device(devices)
  params = {role: state.count_params(state.abstract_params(model, head))
            for role, (model, head) in config_lib.model_roles(config).items()}
  steps = {name: measure(step, hbm, programs)
           for name, step in build_steps(config, mesh).items()}
  return {'topology': topology, 'device_kind': devices[0].device_kind, 'devices': len(devices),
          'mesh': dict(mesh.shape), 'params': params, 'steps': steps}


def format_report(report: dict[str, Any]) -> str:
  """A human-readable table of `check`'s report."""
  gib = lambda n: f'{n / GIB:8.2f}'
  lines = [f"{report['topology']}: {report['devices']} x {report['device_kind']}, "
           f"mesh {report['mesh']}"]
  lines += [f'  {role:<9} {n / 1e6:12,.1f}M params' for role, n in report['params'].items()]
  lines.append(f"  {'step':<16}{'args':>8}{'temps':>8}{'outputs':>8}{'aliased':>8}{'held':>8}"
               f"{'total':>8}{'HBM':>8}  fits   TFLOPs  compile   (GiB per device)")
  for name, s in report['steps'].items():
    hbm = '       ?' if s['hbm_per_device'] is None else gib(s['hbm_per_device'])
    flops = '     ?' if s['flops'] is None else f"{s['flops'] / 1e12:8.1f}"
    lines.append(f"  {name:<16}{gib(s['argument_bytes'])}{gib(s['temp_bytes'])}"
                 f"{gib(s['output_bytes'])}{gib(s['alias_bytes'])}{gib(s['held_bytes'])}"
                 f"{gib(s['bytes_per_device'])}{hbm}  {str(s['fits']):<5}{flops}"
                 f"{s['compile_seconds']:7.1f}s")
  return '\n'.join(lines)


# The regression guard (tests/test_aot_guard.py): the paper stages' steps, with the paper's
# compute dtype, remat, chunking and code paths but the tiny geometry and 64-token contexts,
# compiled for a 4-chip slice with the paper's rows per device (`guard_config`). Their
# per-device temporaries are recorded by experiments/aot/refresh.py (GUARD_RECORD) and may not
# grow by more than GUARD_TOLERANCE: the compiler plans the same program identically on the same
# libtpu, so any growth is a code change, and 5% leaves room for a libtpu upgrade's
# re-scheduling. Issue 21's regression (8e82070 raised the 1.3B PPO-ptx update's temporaries
# from 76.6 to 95.8 GiB, +25%) grew this ppo_step's by 8.9%; with two minibatch rows per device
# instead of the paper's one it grew 1.3%, which is why the rows per device follow the paper.
GUARD_TOPOLOGY = 'v5p:2x2x1'
GUARD_CHIPS = 4
GUARD_TOLERANCE = 0.05
GUARD_RECORD = pathlib.Path(__file__).resolve().parents[1] / 'experiments/aot/guard.json'
GUARD_STAGES = ('sft', 'rm', 'ppo_ptx')


def guard_config(stage: str):
  """configs/<stage>.py:1.3b shrunk to the guard's size; the code paths stay the paper's.

  The model is 'tiny' with the paper's dtype and remat, contexts are 64 tokens, and the paper's
  mesh and batches are scaled to the guard's 4 chips keeping the rows per device: the data axis
  (at most 2) where the paper has one, and every batch divided as the paper's slice divides it
  (1.3B PPO-ptx: one minibatch row and eight pretraining rows per device, eight updates).
  """
  c = config_lib.load_config(f'{config_lib.CONFIG_DIR / stage}.py:1.3b')
  for field in ('model', 'reward_model'):
    if field in c:
      paper = c[field]
      c[field] = config_lib.model_config_dict('tiny')
      for knob in ('dtype', 'param_dtype', 'remat'):
        c[field][knob] = paper[knob]
  c.data.update(seq_len=64, prompt_len=32, response_len=32)
  data, fsdp, _ = sharding.mesh_shape(dict(c.mesh), config_lib.topology_chips(c.topology))
  c.mesh.update(data=min(data, 2), fsdp=GUARD_CHIPS // min(data, 2), tensor=1)
  c.topology = GUARD_TOPOLOGY
  for field in ('batch_size', 'minibatch_size'):
    if field in c:
      c[field] = c[field] * GUARD_CHIPS // (data * fsdp)
  return c


def guard_temps(configs: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
  """Per-device temporary bytes of every guard step: {stage: {step: bytes}}.

  Args:
    configs: stage -> config to measure; default every `guard_config(stage)` of GUARD_STAGES.
  """
  configs = configs or {stage: guard_config(stage) for stage in GUARD_STAGES}
  return {stage: {name: step['temp_bytes'] for name, step in check(c, c.topology)['steps'].items()}
          for stage, c in configs.items()}


def guard_growth(measured: dict[str, dict[str, int]], recorded: dict[str, dict[str, int]],
                 tolerance: float = GUARD_TOLERANCE) -> list[str]:
  """One line per step whose temporaries grew beyond `tolerance` or that has no record."""
  problems = []
  for stage, steps in measured.items():
    for name, temp in steps.items():
      before = recorded.get(stage, {}).get(name)
      if before is None:
        problems.append(f'{stage}/{name}: no recorded value; run experiments/aot/refresh.py')
      elif temp > before * (1 + tolerance):
        problems.append(f'{stage}/{name}: temporaries {temp:,} bytes per device, recorded '
                        f'{before:,} (+{temp / before - 1:.1%} > {tolerance:.0%})')
  return problems


def main(argv):
  del argv
  config = FLAGS.config
  topology = FLAGS.topology or config.get('topology')
  try:
    config_lib.validate(config)
    if not topology:
      raise config_lib.ConfigError('no --topology given and the config names none')
    report = check(config, topology)
  except (config_lib.ConfigError, TopologyError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if FLAGS.json:
    print(json.dumps(report))
  else:
    print(format_report(report))


if __name__ == '__main__':
  app.run(main, flags_parser=main_lib.parse_flags)
