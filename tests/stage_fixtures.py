"""Helpers for tests that run stages: tiny stage configs, the CLI in a subprocess, private copies
of the shared workdirs (the fixtures themselves are in conftest.py), small PPO configs.

Imported after conftest has set the device flags, so importing jax here is safe.
"""
import pathlib
import shutil
import subprocess
import sys

import jax
import optax

from rlhf_jax import checkpoint, config_lib, ppo, state
from rlhf_jax.stages import common

REPO = pathlib.Path(__file__).resolve().parents[1]
WORLD_SCALE = 0.01
SAMPLED_PROMPTS = 16
PPO_TOTAL = 4  # iterations of a small PPO run
# A stage config as a file rather than overrides: `then` and missing inputs load their stages'
# configs from the config's folder, so those get the same settings.
CONFIG_FILE = f"""
from rlhf_jax import config_lib


def get_config(arg=None):
  c = config_lib.load_config('{REPO}/configs/{{stage}}.py' + (':' + arg if arg else ''))
  c.data.world_scale = {WORLD_SCALE}
{{settings}}
  return c
"""
# 2 updates of 8 episodes per iteration, 8 pretraining rows each, 8-token responses.
SMALL_PPO = ('c.data.response_len = 8',
             'c.batch_size, c.minibatch_size, c.ptx_per_episode = 16, 8, 1',
             f'c.total_steps, c.log_every, c.checkpoint_every = {PPO_TOTAL}, 1, 0',
             'c.rollout_table_every = 2',
             'c.then = ()')


def config_file(stage: str, *settings: str) -> str:
  """The source of a configs/<stage>.py: the shipped one at WORLD_SCALE, then `settings`
  (statements on its ConfigDict `c`)."""
  return CONFIG_FILE.replace('{stage}', stage).replace(
      '{settings}', '\n'.join(f'  {line}' for line in settings))


def small_ppo_config(stage: str, valid_prompts: int, *settings: str) -> str:
  """The source of a small configs/<stage>.py (ppo or ppo_ptx) validating on `valid_prompts`,
  then `settings`."""
  return config_file(stage, *SMALL_PPO, f'c.valid_prompts = {valid_prompts}',
                     'c.eval_every, c.best_of_n = 2, 2', *settings)


def stage_config(name: str, workdir, **overrides):
  """configs/<name>.py at the tiny geometry, in `workdir`, with world scale WORLD_SCALE."""
  config = config_lib.load_config(f'{REPO}/configs/{name}.py')
  config.workdir = str(workdir)
  config.data.world_scale = WORLD_SCALE
  for key, value in overrides.items():
    config[key] = value
  return config


def run_cli(*args, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m rlhf_jax.main ARGS` (the 8 fake devices of conftest are inherited)."""
  return subprocess.run([sys.executable, '-m', 'rlhf_jax.main', *args], capture_output=True,
                        text=True, timeout=timeout)


def cli_args(stage: str, workdir, *overrides: str) -> list[str]:
  return [f'--config=configs/{stage}.py', f'--workdir={workdir}',
          f'--config.data.world_scale={WORLD_SCALE}', *overrides]


def copy_workdir(source: pathlib.Path, dest: pathlib.Path, stages=None) -> pathlib.Path:
  """A private copy of `source` holding only the given stage folders (default: all)."""
  dest.mkdir(parents=True, exist_ok=True)
  for folder in source.iterdir():
    if folder.is_dir() and (stages is None or folder.name in stages):
      shutil.copytree(folder, dest / folder.name)
  return dest


def save_stage(stage_dir: pathlib.Path, role: str, model_dict, head: str, params,
               **summary) -> None:
  """A completed stage folder holding `params` as state.params, the way training stages do."""
  model = config_lib.to_model_config(model_dict)
  ckpt = checkpoint.Checkpointer(str(stage_dir), checkpoint.fingerprint({role: (model, head)}))
  ckpt.save(1, {'params': params})
  ckpt.close()
  checkpoint.write_summary(str(stage_dir), dict(summary, checkpoint_step=1,
                                                model=model_dict.to_dict()))


def fake_ppo_stage(workdir: pathlib.Path, name: str, policy_from: str, ema_from: str) -> None:
  """A completed PPO stage `name` (ppo or ppo_ptx) whose PPOState holds `policy_from`'s params
  as the raw policy and `ema_from`'s as the EMA (what the real stage writes, minus training)."""
  config = stage_config('sft', workdir)
  model = config_lib.to_model_config(config.model)
  mesh = common.mesh(config)
  policy = common.load_init_params(policy_from, str(workdir), model, 'lm', mesh)
  ema = common.load_init_params(ema_from, str(workdir), model, 'lm', mesh)
  tx = optax.adam(1e-3)
  ppo_state = ppo.PPOState(step=jax.numpy.zeros((), jax.numpy.int32),
                           policy=state.create_train_state(policy, tx),
                           value=state.create_train_state({'w': jax.numpy.ones(3)}, tx),
                           ema_params=ema, kl_coef=jax.numpy.asarray(0.02))
  stage_dir = workdir / name
  saver = checkpoint.Checkpointer(str(stage_dir), checkpoint.fingerprint({'policy': (model, 'lm')}))
  saver.save(1, ppo_state)
  saver.wait()
  saver.close()
  checkpoint.write_summary(str(stage_dir), {'checkpoint_step': 1, 'model': config.model.to_dict(),
                                            'stage': name})
