"""Supervised fine-tuning baseline (InstructGPT App. C.1).

Paper: 16 epochs, residual dropout 0.2, cosine decay to 10% with no warmup, Adam (0.9, 0.95);
1.3B/6B: lr 9.65e-6, batch 32; 175B: lr 5.03e-6, batch 8. Final model chosen by validation RM score.

Usage: python -m rlhf_jax.main --config=configs/sft.py:1.3b --workdir=DIR
"""
from rlhf_jax import config_lib

# geometry -> (peak lr, batch size in demonstrations).
PAPER = {'1.3b': (9.65e-6, 32), '6b': (9.65e-6, 32), '175b': (5.03e-6, 8)}
# Mini-world presets train from a 1M/10M-parameter base in minutes: the paper's lr is far too
# small at that scale (GPT-3's own lr grows as models shrink, Table 2.1), so we use 3e-4.
MINI = (3e-4, 32)
# Paper geometries: bf16 compute over fp32 master weights (App. C: "fp16 weights and activations,
# with fp32 master copies"; bf16 needs no loss scaling), per-layer remat, and the v5p slice on which
# `python -m rlhf_jax.aot` finds every step fits (README, "Fit before you launch").
# geometry -> (topology, remat policy); the mesh is config_lib.mesh_for's.
SCALE = {'1.3b': ('v5p:2x2x1', 'dots'), '6b': ('v5p:2x2x1', 'full'), '175b': ('v5p:4x4x4', 'full')}


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  lr, batch = PAPER.get(geometry, MINI)
  c = config_lib.base_config(geometry)
  c.stage = 'sft'
  c.mesh = config_lib.mesh_for(geometry)
  c.model.resid_dropout = 0.2
  if geometry in SCALE:
    c.topology, c.model.remat = SCALE[geometry]
    c.model.dtype = 'bfloat16'
  c.data = config_lib.data_config(c.model.geometry)
  c.optimizer = config_lib.optimizer_config(lr, schedule='cosine', final_lr_frac=0.1)
  c.batch_size = batch
  c.epochs = 16
  c.loss_on_prompt = False
  c.ptx_fraction = 0.0  # share of each batch drawn from pretraining text
  c.init_from = 'pretrain'  # a stage name, a checkpoint path, or hf:DIR
  c.select_by = 'rm_score'  # falls back to validation loss when no reward model exists
  return c
