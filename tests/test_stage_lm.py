"""LM stages: SFT from the shared tiny workdir's pretrained model, with validation-loss model
selection, then sft_init."""
import json

import jax
import numpy as np
from stage_fixtures import copy_workdir, stage_config

from rlhf_jax import checkpoint, config_lib, stages
from rlhf_jax.stages import common


def test_sft_keeps_the_best_validation_checkpoint(tiny_workdir, tmp_path):
  copy_workdir(tiny_workdir, tmp_path, ['data', 'pretrain'])  # pretrain: 3 steps
  summary = stages.run(stage_config('sft', tmp_path, total_steps=6, log_every=1, eval_every=2))
  assert summary['selected_by'] == 'sft/valid_loss'
  logged = [json.loads(line) for line in (tmp_path / 'sft' / 'metrics.jsonl').read_text().split('\n')
            if line]
  valid = {m['step']: m['sft/valid_loss'] for m in logged if 'sft/valid_loss' in m}
  best_step = min(valid, key=valid.get)
  assert summary['checkpoint_step'] == best_step
  assert np.isclose(summary['selected_value'], valid[best_step])

  config = stage_config('sft', tmp_path)
  model = config_lib.to_model_config(config.model)
  mesh = common.mesh(config)
  selected = common.load_init_params('sft', str(tmp_path), model, 'lm', mesh)
  raw = checkpoint._manager(str(tmp_path / 'sft' / 'selected' / 'checkpoints'), 0, read_only=True)
  assert raw.latest_step() == best_step
  leaves = jax.tree.leaves(selected)
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)

  # sft_init (App. C.3): the same stage with pretraining rows mixed into every batch.
  init = stage_config('sft_init', tmp_path, total_steps=2, log_every=1)
  summary = stages.run(init)
  assert summary['steps'] == 2 and summary['selected_by'] == 'last'
  tokens = [m['sft/tokens'] for m in (json.loads(line) for line in
            (tmp_path / 'sft_init' / 'metrics.jsonl').read_text().split('\n') if line)]
  # Packed text rows are full of loss tokens: far more per batch than demonstrations alone give.
  assert min(tokens) > max(m['sft/tokens'] for m in logged)
