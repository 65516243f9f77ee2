"""Model selection during training: keep the parameters of the best evaluation so far.

Paper (App. C.1): the final SFT model is the checkpoint with the best validation RM score; we use
that when a reward model exists and the lowest validation loss otherwise. The best parameters
go to <stage_dir>/selected/checkpoints/<step> (only the best is kept), and summary.json's
'params_from' points later stages' `checkpoint.load_params` there.
"""
import json
import os

import jax

from rlhf_jax import checkpoint

SELECTED_DIR = 'selected'


class BestParams:
  """Tracks the best value of one metric and saves the parameters that reached it.

  Resumable: the best value so far is read back from <stage_dir>/selected/best.json.
  """

  def __init__(self, stage_dir: str, metric: str, mode: str, fingerprint):
    self.metric, self.sign = metric, {'min': 1.0, 'max': -1.0}[mode]
    self.directory = os.path.join(stage_dir, SELECTED_DIR)
    self.record_path = os.path.join(self.directory, 'best.json')
    self.best = None
    if os.path.exists(self.record_path):
      with open(self.record_path) as f:
        self.best = json.load(f)
    self._ckpt = checkpoint.Checkpointer(self.directory, fingerprint, keep=1, num_data=0)

  def update(self, step: int, value: float, params) -> None:
    """Saves `params` when `value` beats the best so far (ties keep the earlier step)."""
    if self.best is not None and self.sign * value >= self.sign * self.best['value']:
      return
    self._ckpt.save(step, {'params': params})
    self._ckpt.wait()
    self.best = {'step': step, 'metric': self.metric, 'value': value}
    if jax.process_index() != 0:
      return
    checkpoint.write_json(self.record_path, self.best)

  def summary(self) -> dict:
    """summary.json fields naming the selected checkpoint (empty when nothing was evaluated)."""
    if self.best is None:
      return {}
    return {'params_from': os.path.join(SELECTED_DIR, checkpoint.CHECKPOINT_DIR),
            'checkpoint_step': self.best['step'], 'selected_by': self.metric,
            'selected_value': self.best['value']}

  def close(self) -> None:
    self._ckpt.close()
