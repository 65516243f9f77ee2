"""One program per supervised stage (stages/program.py): the step the stage runner hands its
training loop is the step `python -m rlhf_jax.aot` compiles, down to the lowered program."""
import json

import jax
import pytest
from stage_fixtures import copy_workdir, stage_config

from rlhf_jax import aot, loop
from rlhf_jax.stages import common, lm
from rlhf_jax.stages import rm as rm_stage


class _LoopStarted(Exception):
  """Raised in place of the training loop: by then the runner has built what it would run."""


def _handed_to_loop(monkeypatch, runner, config, stage_dir) -> dict:
  """The keyword arguments (and `step`) that `runner(config, stage_dir)` passes to loop.run."""
  handed = {}

  def fake_run(step, **kwargs):
    handed.update(step=step, **kwargs)
    raise _LoopStarted
  monkeypatch.setattr(loop, 'run', fake_run)
  with pytest.raises(_LoopStarted):
    runner(config, stage_dir)
  return handed


def _write_rankings(labels_dir) -> None:
  """A few K-way rankings (K = 2..4) as the label stage writes them."""
  labels_dir.mkdir()
  rows = [{'prompt': f'question {i}', 'completions': [f'answer {j}' for j in range(k)],
           'ranks': list(range(k)), 'labeler': 'a'} for i, k in enumerate((2, 3, 4, 4))]
  (labels_dir / 'rankings_train.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


@pytest.mark.parametrize('stage, runner', [('sft', lm.run_lm), ('rm', rm_stage.run_rm)])
def test_aot_compiles_the_step_the_stage_runs(stage, runner, tiny_world, tmp_path, monkeypatch):
  workdir = copy_workdir(tiny_world, tmp_path / 'w', ['data'])
  if stage == 'rm':
    _write_rankings(workdir / 'labels')
  # The tiny geometry: its training step differentiates the unrolled layers (a CPU preset).
  config = stage_config(stage, workdir, total_steps=3)
  assert config.unroll_update_layers
  handed = _handed_to_loop(monkeypatch, runner, config, workdir / stage)

  (name, checked), = aot.build_steps(config, common.mesh(config)).items()
  assert name == {'sft': 'sft_step', 'rm': 'rm_step'}[stage]
  state, batch, rng = checked.args
  assert jax.tree.structure(handed['abstract_state']) == jax.tree.structure(state)
  for ran, abstract in zip(jax.tree.leaves(handed['abstract_state']), jax.tree.leaves(state)):
    assert (ran.shape, ran.dtype, ran.sharding) == (abstract.shape, abstract.dtype,
                                                    abstract.sharding)
  assert handed['step'].lower(state, batch, rng).as_text() == checked.fn.lower(
      state, batch, rng).as_text()
