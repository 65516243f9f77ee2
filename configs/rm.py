"""Reward model (InstructGPT App. C.2).

Paper: a single 6B RM for every policy size, started from the 6B SFT model (§3.5); one epoch;
lr 9e-6, cosine to 10%; 64 prompts per batch, each with all C(K,2) comparisons of its K = 4..9
ranked completions as one element.

Geometry: `config_lib.reward_geometry` of the pipeline's. The paper's 6B RM is 4.6x its 1.3B
policy; the mini world's tiny policy (0.89M parameters) gets 'tiny-rm' (4 layers, d_model 256:
3.4M, 3.8x), with its own base model (pretrain_rm) and SFT model (sft_rm). An RM of the
policy's own size reached only 0.61 held-out accuracy against a labeler ceiling of 0.78, and
PPO over-optimised it (experiments/instructgpt_mini/README.md); Gao et al. (2022) found RMs
under ~3M parameters near chance. Paper geometries start sft_rm from an imported 6B model.
"""
from rlhf_jax import config_lib

MINI_LR = 1e-4  # mini-world RMs start from a tiny SFT model; 9e-6 barely moves them.
# Mini-world batch: the ~500 sampled training prompts then give ~30 updates instead of 8.
MINI_BATCH = 16
# Paper geometries: bf16 compute over fp32 master weights (App. C: "fp16 weights and activations,
# with fp32 master copies"; bf16 needs no loss scaling), per-layer remat, and the v5p slice on which
# `python -m rlhf_jax.aot` finds every step fits (README, "Fit before you launch").
# The RM is 6B for every policy size, so one setting: (topology, mesh, remat policy). Data x FSDP
# rather than FSDP alone: with fsdp=64 the compiler needs 117 GiB per chip, with 4 x 16 42 GiB.
SCALE = ('v5p:4x4x4', dict(data=4, fsdp=16, tensor=1), 'full')


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  rm_geometry = config_lib.reward_geometry(geometry)
  c = config_lib.base_config(rm_geometry)
  c.stage = 'rm'
  c.pipeline_geometry = geometry  # the policy's: dependencies are loaded at it
  c.workdir = config_lib.default_workdir(geometry)
  c.mesh = config_lib.mesh_for(rm_geometry)
  if geometry in config_lib.PAPER_GEOMETRIES:
    c.topology, mesh, c.model.remat = SCALE
    c.mesh.update(mesh)
    c.model.dtype = 'bfloat16'
  c.data = config_lib.data_config(c.model.geometry)
  lr = 9e-6 if geometry in config_lib.PAPER_GEOMETRIES else MINI_LR
  c.optimizer = config_lib.optimizer_config(lr, schedule='cosine', final_lr_frac=0.1)
  c.batch_size = 64 if geometry in config_lib.PAPER_GEOMETRIES else MINI_BATCH  # prompts
  c.k_max = 9
  # Validation on both labeler sets: periodically at paper scale (an epoch is ~500 steps); the
  # mini run's ~30 steps are evaluated once at the end (summary.json).
  c.eval_every = 100 if geometry in config_lib.PAPER_GEOMETRIES else 0
  c.epochs = 1
  c.init_from = 'sft_rm'  # the RM's own SFT model, at the RM geometry (§3.5)
  return c
