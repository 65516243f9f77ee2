"""K-way rankings of the sampled completions (InstructGPT sections 3.4-3.5).

Simulated labelers by default: one training labeler per prompt; validation prompts are ranked by
training and by held-out labelers. To train on human rankings instead, point `data.rankings` at a
rankings JSONL (and optionally `data.rankings_heldout` at held-out labelers' rankings):

  python -m rlhf_jax.main --config=configs/label.py --config.data.rankings=FILE --workdir=DIR
"""
from rlhf_jax import config_lib


def get_config(arg=None):
  geometry = config_lib.geometry_arg(arg)
  c = config_lib.base_config(geometry)
  c.stage = 'label'
  c.data = config_lib.data_config(geometry)
  c.data.rankings_heldout = ''
  return c
