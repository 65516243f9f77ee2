"""The workdir's layout: one folder per stage, complete once it holds `summary.json`.

A stage writes only its own folder (`stage_dir`) and reads the folders of the stages it needs;
`summary.json` is written last and atomically (`checkpoint.write_summary`), so a folder without
it is an incomplete attempt.
"""
import pathlib

from rlhf_jax import checkpoint


class WorkdirError(RuntimeError):
  """The workdir is not in a state a stage can run in: another run holds the stage's folder, or
  a file the stage would replace is not its own. The message is one line."""


# Stages whose folder is named for what it holds rather than for the stage.
FOLDERS = {'world': 'data', 'sample': 'samples', 'label': 'labels'}
# Every stage, in the order the main job runs them (ppo beside ppo_ptx).
PIPELINE = ('world', 'pretrain', 'sft', 'sft_init', 'sample', 'label', 'pretrain_rm', 'sft_rm',
            'rm', 'ppo', 'ppo_ptx', 'eval')


def stage_dir(workdir: str, stage: str) -> pathlib.Path:
  return pathlib.Path(workdir) / FOLDERS.get(stage, stage)


def summary(workdir: str, stage: str) -> dict | None:
  """The stage's summary.json if it completed, else None."""
  return checkpoint.read_summary(str(stage_dir(workdir, stage)))
