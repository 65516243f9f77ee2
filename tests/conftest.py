"""Test-wide setup: 8 fake CPU devices (set before jax is imported anywhere), and the fixtures
several test modules share, each built once per test session:

- `tiny_world`: the world stage's data at scale stage_fixtures.WORLD_SCALE;
- `tiny_workdir`: that world plus pretrain -> sft -> pretrain_rm -> sft_rm (3 steps each) ->
  sample -> label (16 sampled training and validation prompts, through the CLI in subprocesses,
  as a user runs them; their logs are kept as cli_<stage>.log);
- `configs`, `inputs`: small PPO configs and a workdir holding every input of the PPO stages.

Tests never modify them: `stage_fixtures.copy_workdir(tiny_workdir, dest, stages)` gives a
private copy of some stage folders. pytest-xdist workers share one build: the first builds it
under a file lock while the others wait. Test tiers: pytest.ini.
"""
import os

# First: XLA stops reading XLA_FLAGS at a token it cannot parse (such as a stray
# 'intra_op_parallelism_threads=1'), and the suite needs its 8 devices.
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=8 " + os.environ.get("XLA_FLAGS", "")).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=wrong-import-position,g-import-not-at-top  # after the flags above
import fcntl  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402
import stage_fixtures  # noqa: E402
from stage_fixtures import SAMPLED_PROMPTS, cli_args, run_cli, stage_config  # noqa: E402

READY = 'READY'


def _shared(tmp_path_factory, name: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
  """The folder `name` of this test session, built by `build(folder)` by the first worker."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the folder all workers of this session share
  folder = root / name
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (folder / READY).exists():
      if folder.exists():
        shutil.rmtree(folder)  # a build that failed half-way
      build(folder)
      (folder / READY).touch()
  return folder


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items) -> None:
  """Tests that need the shared tiny workdir are slow: building it trains four models.

  Slow tests run first, so the minutes-long ones start early and the short ones fill in at the
  end on whichever worker is free (pytest.ini's worksteal moves queued tests between workers).
  """
  for item in items:
    if 'tiny_workdir' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.slow)
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)  # stable


@pytest.fixture(scope='session')
def tiny_world(tmp_path_factory) -> pathlib.Path:
  """A workdir holding only the world stage's `data/` (read-only by convention)."""
  from rlhf_jax import stages
  return _shared(tmp_path_factory, 'tiny_world',
                 lambda workdir: stages.run(stage_config('world', workdir)))


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory, tiny_world) -> pathlib.Path:
  """The shared, complete tiny workdir (read-only by convention)."""
  from rlhf_jax import stages

  def build(workdir: pathlib.Path) -> None:
    stage_fixtures.copy_workdir(tiny_world, workdir, ['data'])
    for stage in ('pretrain', 'sft', 'pretrain_rm', 'sft_rm'):  # the RM has its own base and SFT
      stages.run(stage_config(stage, workdir, total_steps=3, log_every=1, eval_every=0))
    sample_args = [f'--config.max_prompts={SAMPLED_PROMPTS}',
                   f'--config.max_valid_prompts={SAMPLED_PROMPTS}']
    for stage, extra in (('sample', sample_args), ('label', [])):
      result = run_cli(*cli_args(stage, workdir, *extra))
      (workdir / f'cli_{stage}.log').write_text(
          f'returncode {result.returncode}\n{result.stdout}\n{result.stderr}')
      if result.returncode:
        raise RuntimeError(f'{stage} CLI failed:\n{result.stderr[-3000:]}')
  return _shared(tmp_path_factory, 'tiny_workdir', build)


@pytest.fixture(scope='session')
def configs(tmp_path_factory) -> pathlib.Path:
  """A folder of small ppo.py and ppo_ptx.py configs (stage_fixtures.SMALL_PPO, no validation)."""
  folder = tmp_path_factory.mktemp('ppo_configs')
  for stage in ('ppo', 'ppo_ptx'):
    (folder / f'{stage}.py').write_text(stage_fixtures.small_ppo_config(stage, valid_prompts=0))
  return folder


@pytest.fixture(scope='session')
def inputs(tiny_workdir, tmp_path_factory, configs) -> pathlib.Path:
  """A workdir with data, sft and sft_init (= pretrain) and rm (the RM's own pretrained trunk +
  fresh head), no PPO (read-only by convention).

  The pretrained model stands in for sft_init (same checkpoint layout), and the reward model is
  its RM twin's trunk plus a fresh scalar head, stored as the rm stage stores it (params +
  'reward_bias' in summary.json): fast, and independent of how the rm stage trains.
  """
  import flax.linen as nn
  import jax

  from rlhf_jax import config_lib, state
  from rlhf_jax.stages import common
  workdir = stage_fixtures.copy_workdir(tiny_workdir, tmp_path_factory.mktemp('ppo_inputs'),
                                        ['data', 'pretrain', 'pretrain_rm', 'sft'])
  shutil.copytree(workdir / 'pretrain', workdir / 'sft_init')
  config = config_lib.load_config(f'{configs}/ppo.py')
  model = config_lib.to_model_config(config.reward_model)
  mesh = common.mesh(config)
  lm = common.load_init_params('pretrain_rm', str(workdir), model, 'lm', mesh)
  fresh = nn.unbox(state.init_params(model, 'scalar', jax.random.key(1)))
  stage_fixtures.save_stage(workdir / 'rm', 'reward', config.reward_model, 'scalar',
                            state.init_scalar_from_lm(lm, fresh), reward_bias=0.5)
  return workdir
