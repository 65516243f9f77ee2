"""PPO without pretraining mix (InstructGPT App. C.4 with gamma = 0).

Paper: 256k episodes, rollout batch 512 split into 8 minibatches of 64, one epoch; fixed KL
coefficient beta 0.02 to the sft_init model; value function initialised from the 6B RM with lr 9e-6
(5e-6 for 175B); constant lr with a 10-iteration warmup from 0.1x; EMA decay 0.992; GAE with no
discount; clip 0.2; sampling temperature 1. The final policy lr is not printed (App. E.9 sweeps
2.55e-6..2.55e-5; PPO without ptx diverged above 8.05e-6): we take 5.10e-6, a swept value below it.
GAE lambda, value clipping and whitening are not stated; we follow lm-human-preferences
(lambda 0.95, value clip 0.2, whitened advantages).
"""
from rlhf_jax import config_lib

MINI = dict(lr=2e-5, value_lr=5e-5, episodes=2048, batch_size=64, minibatch_size=16)


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  paper = geometry in config_lib.PAPER_GEOMETRIES
  c = config_lib.base_config(geometry)
  c.stage = 'ppo'
  c.mesh = config_lib.mesh_for(geometry)
  c.data = config_lib.data_config(c.model.geometry)
  rm_geometry = '6b' if paper else geometry
  c.reward_model = config_lib.model_config_dict(rm_geometry)
  value_lr = (5e-6 if geometry == '175b' else 9e-6) if paper else MINI['value_lr']
  lr = 5.10e-6 if paper else MINI['lr']
  c.optimizer = config_lib.optimizer_config(lr, schedule='constant')
  c.value_optimizer = config_lib.optimizer_config(value_lr, schedule='constant')
  for opt in (c.optimizer, c.value_optimizer):
    opt.warmup_steps = 10  # iterations, starting from one tenth of the peak
    opt.warmup_start_frac = 0.1
  c.episodes = 256_000 if paper else MINI['episodes']
  c.batch_size = 512 if paper else MINI['batch_size']  # episodes per iteration
  c.minibatch_size = 64 if paper else MINI['minibatch_size']
  c.ppo_epochs = 1
  c.kl_coef = 0.02
  c.kl_target = 0.0  # > 0 switches to the adaptive controller of lm-human-preferences
  c.kl_horizon = 10_000
  c.ptx_coef = 0.0
  c.ptx_per_episode = 8
  c.clip = 0.2
  c.value_clip = 0.2
  c.gae_gamma = 1.0
  c.gae_lambda = 0.95
  c.whiten_rewards = False
  c.whiten_advantages = True
  c.temperature = 1.0
  c.no_eos_penalty = -1.0  # score of a response that never emits EOS (lm-human-preferences)
  c.ema_decay = 0.992
  c.init_from = 'sft_init'
  c.reward_from = 'rm'
  return c
