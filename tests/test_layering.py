"""The import rule of docs/design.md: models/ and the pure steps sit below the wiring.

models/ may import only itself and `rlhf_jax.sharding` (the logical axis vocabulary its
parameters and activations are named in), which itself imports nothing of rlhf_jax; the pure-step
modules do not import the config module.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'rlhf_jax'


def project_imports(path: pathlib.Path) -> set[str]:
  """The rlhf_jax modules `path` imports, at any depth of its code."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names |= {f'{node.module}.{alias.name}' for alias in node.names}
  return {name for name in names if name.split('.')[0] == 'rlhf_jax'}


@pytest.mark.parametrize('path', sorted((PACKAGE / 'models').glob('*.py')), ids=lambda p: p.name)
def test_models_import_only_themselves_and_the_axis_vocabulary(path):
  allowed = ('rlhf_jax.models', 'rlhf_jax.sharding')
  outside = {name for name in project_imports(path)
             if not any(name == a or name.startswith(a + '.') for a in allowed)}
  assert not outside, f'{path.name} imports {sorted(outside)}'


def test_the_axis_vocabulary_imports_nothing_of_the_project():
  assert not project_imports(PACKAGE / 'sharding.py')


@pytest.mark.parametrize('module', ['experience', 'ppo', 'rm', 'sft', 'losses', 'rl_math'])
def test_pure_steps_do_not_read_configs(module):
  assert 'rlhf_jax.config_lib' not in project_imports(PACKAGE / f'{module}.py')
