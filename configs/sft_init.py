"""RL initialisation and KL reference (InstructGPT App. C.3).

Paper: 2 epochs on demonstrations with 10% pretraining mix, cosine decay to 10%, batch 32
(1.3B/6B) or 8 (175B), lr 5e-6 / 1.04e-5 / 2.45e-6 for 1.3B / 6B / 175B.
"""
from rlhf_jax import config_lib

sft = config_lib.sibling_config(__file__, 'sft')

PAPER = {'1.3b': (5e-6, 32), '6b': (1.04e-5, 32), '175b': (2.45e-6, 8)}


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  c = sft.get_config(geometry)
  c.stage = 'sft_init'
  lr, c.batch_size = PAPER.get(geometry, sft.MINI)
  c.optimizer.lr = lr
  c.epochs = 2
  c.ptx_fraction = 0.1
  c.select_by = 'last'
  return c
