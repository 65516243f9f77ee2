"""Multi-process start-up: join the other processes of a run before any device is touched.

One process runs per host (TPU pod worker, GPU node) or per GPU; together they see every device
of the slice, and the mesh spans them all (`sharding.make_mesh` over `jax.devices()`). Input
pipelines read one shard per process (`jax.process_index()`), checkpoints are written by all
processes together, and only process 0 prints and writes logs and reports.

How the processes find each other, in order:
  1. explicit flags: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`
     (local multi-process runs, clusters JAX does not know);
  2. SLURM: inside `srun` with more than one task, JAX reads the coordinator (first node of the
     step), the task count and this task's rank from SLURM_* variables;
  3. Cloud TPU VM: JAX reads the slice's workers from the TPU metadata;
  4. otherwise a single process: nothing to do.
"""
import glob
import importlib.util
import os

import jax
from absl import flags

from rlhf_jax import config_lib

flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, for a multi-process run JAX cannot detect.')
flags.DEFINE_integer('num_processes', None, 'Processes in the run (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')
FLAGS = flags.FLAGS


class DistributedError(config_lib.ConfigError):
  """Inconsistent multi-process flags; main prints the one-line message and exits 2."""


def _slurm_tasks() -> int:
  """Tasks of the enclosing `srun` step (1 outside SLURM or in a plain `sbatch` shell)."""
  if 'SLURM_STEP_NODELIST' not in os.environ or 'SLURM_PROCID' not in os.environ:
    return 1
  return int(os.environ.get('SLURM_NTASKS', '1'))


def _on_cloud_tpu_vm() -> bool:
  """TPU chips attached to this host (the device nodes libtpu opens: v4+ /dev/accel*, v5e+/v6e
  /dev/vfio/N), with libtpu installed."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  return bool(glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*'))


def detect(coordinator_address: str | None, num_processes: int | None,
           process_id: int | None) -> str | None:
  """How this process should join a multi-process run: 'flags', 'slurm', 'tpu', or None.

  Raises:
    DistributedError: some but not all of the three explicit settings are given, or they are
      inconsistent.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given):
    if not all(given):
      raise DistributedError('--coordinator_address, --num_processes and --process_id go '
                             'together: give all three or none')
    if not 0 <= process_id < num_processes:
      raise DistributedError(f'--process_id={process_id} not in [0, --num_processes='
                             f'{num_processes})')
    return 'flags'
  if _slurm_tasks() > 1:
    return 'slurm'
  if _on_cloud_tpu_vm():
    return 'tpu'
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str | None:
  """Joins the run's other processes (see the module docstring); returns how, or None.

  Must run before anything touches a device: JAX builds its device list once.
  """
  method = detect(coordinator_address, num_processes, process_id)
  if method == 'flags':
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif method is not None:
    # JAX's own cluster detection reads SLURM_* variables or the TPU metadata server.
    jax.distributed.initialize()
  return method


def initialize_from_flags() -> str | None:
  """`initialize` with the --coordinator_address / --num_processes / --process_id flags."""
  return initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
