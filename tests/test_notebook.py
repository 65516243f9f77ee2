"""notebooks/instructgpt_mini.ipynb runs top to bottom (nbclient), so it cannot rot, and its
install cell installs what RLHF_JAX_SOURCE names.

The parameters cell is replaced: the run reuses the shared tiny workdir's world and base model
(its cell asks for the fixture's 3 steps, so it finds that stage complete: a stage is reused
only for the config it was made with) and trains the rest for two steps each; every other
cell runs as a Colab user runs it.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from stage_fixtures import WORLD_SCALE, copy_workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'notebooks' / 'instructgpt_mini.ipynb'


def test_notebook_runs(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'run', ['data', 'pretrain'])
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [params] = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  params.source = (f'WORKDIR = {str(workdir)!r}\nWORLD_SCALE = {WORLD_SCALE}\n'
                   "STEPS = {'pretrain': 3, 'sft': 2, 'rm': 2, 'sft_init': 2, 'ppo_ptx': 2}\n"
                   "EVAL = {'max_test_prompts': 8, 'public_eval_items': 4, "
                   "'pretrain_eval_batches': 1}")
  NotebookClient(nb, timeout=600, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  assert (workdir / 'eval' / 'report.json').exists()
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
  assert sum(o.get('output_type') == 'display_data' and 'image/png' in o.get('data', {})
             for o in outputs) >= 4  # the training curves and the report's plots
  # Library log lines (orbax, absl, grain) and Python warnings in a cell's output are noise to
  # a notebook reader; the setup cell silences them.
  warned = [o.text for o in outputs if o.get('output_type') == 'stream'
            and ('WARNING' in o.text or 'Warning' in o.text)]
  assert not warned, warned


@pytest.mark.slow
def test_install_cell_installs_the_source(tmp_path):
  """The install cell, run by a fresh venv's python (no system site packages), pip-installs the
  wheel RLHF_JAX_SOURCE names; PIP_NO_DEPS keeps pip off the network."""
  src = tmp_path / 'src'  # what the wheel holds, copied: the build writes into its source tree
  src.mkdir()
  shutil.copy(REPO / 'setup.py', src)
  shutil.copytree(REPO / 'rlhf_jax', src / 'rlhf_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                  '-w', str(tmp_path / 'wheels'), str(src)], check=True)
  [wheel] = (tmp_path / 'wheels').glob('rlhf_jax-*.whl')
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  [install] = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
               if 'RLHF_JAX_SOURCE' in c.source]
  # Without PYTHONPATH and outside the checkout, rlhf_jax is not importable before the install.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(RLHF_JAX_SOURCE=str(wheel), PIP_NO_DEPS='1')
  python = str(venv / 'bin' / 'python')
  subprocess.run([python, '-c', install], env=env, cwd=tmp_path, check=True)
  probe = subprocess.run(
      [python, '-c', "import importlib.metadata; print(importlib.metadata.version('rlhf_jax'))"],
      env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
  assert probe.stdout.strip() == wheel.name.split('-')[1]  # the wheel's own version
  assert list(venv.glob('lib/python*/site-packages/rlhf_jax/stages/__init__.py'))
