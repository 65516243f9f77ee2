"""PPO-ptx, InstructGPT itself (App. C.4): PPO plus gamma = 27.8 times the pretraining
log-likelihood gradient, 8 pretraining sequences per RL episode.

With no other input this config runs the whole pipeline on the InstructGPT-mini world:
  python -m rlhf_jax.main --config=configs/ppo_ptx.py
"""
from rlhf_jax import config_lib

ppo = config_lib.sibling_config(__file__, 'ppo')


def get_config(arg=None):
  c = ppo.get_config(arg)
  c.stage = 'ppo_ptx'
  c.ptx_coef = 27.8
  if c.model.geometry in config_lib.PAPER_GEOMETRIES:
    # App. E.9: PPO-ptx is less sensitive to lr; the swept 1.02e-5 did not diverge with ptx.
    c.optimizer.lr = 1.02e-5
  return c
