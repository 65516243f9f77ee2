"""PPO-ptx, InstructGPT itself (App. C.4): PPO plus gamma = 27.8 times the pretraining
log-likelihood gradient, 8 pretraining sequences per RL episode (the mini world: gamma 3 by the
paper's rule, 1 sequence per episode).

With no other input this config runs the whole pipeline on the InstructGPT-mini world, ending
with the evaluation report:
  python -m rlhf_jax.main --config=configs/ppo_ptx.py
"""
from rlhf_jax import config_lib

ppo = config_lib.sibling_config(__file__, 'ppo')

# Mini world: 1 pretraining row per episode instead of the paper's 8. A row is a full 128-token
# context and an episode ~112 positions, so 8 rows would make the ptx forward and backward ~4.5x
# the policy and value updates together, and a PPO-ptx iteration ~4x a PPO one (measured: train
# is ~3/4 of an iteration). The ptx loss is a per-token mean, so gamma weighs it the same
# whatever the row count; fewer rows only make its gradient noisier, and 16 rows (2k tokens)
# per update keep that small.
MINI_PTX_PER_EPISODE = 1
# Mini-world gamma by the paper's own rule (App. E.6: the gamma that removes the regression on
# the pretraining distribution with the least loss of validation reward), applied on validation
# by experiments/instructgpt_mini/gamma.py on seed 0 (2026-12-01; README there). At the final
# iteration, against sft_init: gamma 0 regresses the validation-text NLL by +0.187 nats; gamma 3
# lowers it by 0.094 at validation reward 0.479; gamma 27.8 lowers it by 0.109 at -0.242 (the
# ptx gradient outweighs PPO's on a base model that is still learning its corpus). Gammas 1 and
# 10 were not run. Paper geometries keep the paper's 27.8.
MINI_PTX_COEF = 3.0


def get_config(arg=None):
  c = ppo.get_config(arg)
  c.stage = 'ppo_ptx'
  c.ptx_coef = 27.8  # the paper's gamma, on our per-token-mean NLL
  if c.model.geometry in config_lib.PAPER_GEOMETRIES:
    # App. E.9: PPO-ptx is less sensitive to lr; the swept 1.02e-5 did not diverge with ptx.
    c.optimizer.lr = 1.02e-5
  else:
    c.then = ('eval',)  # the main command ends with the evaluation report
  if c.model.geometry in config_lib.CPU_PRESETS:  # the mini world
    c.ptx_coef = MINI_PTX_COEF
    c.ptx_per_episode = MINI_PTX_PER_EPISODE
  return c
