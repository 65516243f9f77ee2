"""notebooks/instructgpt_mini.ipynb runs top to bottom (nbclient), so it cannot rot.

The parameters cell is replaced: the run reuses the shared tiny workdir's world and its two base
models (their cells ask for the fixture's 3 steps, so they find those stages complete: a stage is
reused only for the config it was made with) and trains the rest for two steps each; every other
cell runs as a Colab user runs it.
"""
import pathlib

import nbformat
from nbclient import NotebookClient
from stage_fixtures import WORLD_SCALE, copy_workdir

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'instructgpt_mini.ipynb'


def test_notebook_runs(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'run', ['data', 'pretrain', 'pretrain_rm'])
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [params] = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  params.source = (f'WORKDIR = {str(workdir)!r}\nWORLD_SCALE = {WORLD_SCALE}\n'
                   "STEPS = {'pretrain': 3, 'sft': 2, 'pretrain_rm': 3, 'sft_rm': 2, 'rm': 2, "
                   "'sft_init': 2, 'ppo_ptx': 2}\n"
                   "EVAL = {'max_test_prompts': 8, 'public_eval_items': 4, "
                   "'pretrain_eval_batches': 1}")
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  assert (workdir / 'eval' / 'report.json').exists()
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert sum(o.get('output_type') == 'display_data' and 'image/png' in o.get('data', {})
             for o in outputs) >= 4  # the training curves and the report's plots
