"""What a stage folder was made from, so that a result is never reused for another run.

A stage writes `provenance.json` into its folder once its run has started (its training loop
has built its state, or its runner has returned), so a run that fails on its inputs leaves
nothing behind:

    {"config": {<the resolved config, nested as the ConfigDict, less its workdir>},
     "inputs": {<stage name or absolute folder it reads>: <digest of that folder's summary.json>}}

A stage's completion is its `summary.json`, which every run writes anew (it holds the run's wall
time), so the digest of that file names one completion: when an input is made again (`--force`),
its digest changes and every stage that read the old one is stale. The config tells whether a
complete or interrupted folder is the run being asked for.
"""
import hashlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any

from rlhf_jax import checkpoint, config_lib

FILE = 'provenance.json'
# Fields that change where a run writes, how often it reports and where its missing inputs'
# configs are found, not what it computes (its inputs are compared by their digests).
NOT_COMPARED = frozenset({'workdir', 'then', 'log_every', 'checkpoint_every', 'config_file',
                          'stage_configs', 'wandb_project', 'rollout_table_every'})


def digest(folder: str | pathlib.Path) -> str | None:
  """A short hash of `folder`'s summary.json, None when the folder is not a complete stage."""
  path = pathlib.Path(folder) / checkpoint.SUMMARY_FILE
  return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def record(config: Any, inputs: Mapping[str, pathlib.Path]) -> dict:
  """The provenance of a run of `config` reading `inputs` (source -> folder) as they are now."""
  return {'config': resolved(config),
          'inputs': {source: digest(folder) for source, folder in inputs.items()}}


def resolved(config: Any) -> dict:
  """The config as provenance records it: plain JSON values, less the workdir (a copied or
  moved workdir holds the same runs)."""
  return _plain({k: v for k, v in config.to_dict().items() if k != 'workdir'})


def write(folder: pathlib.Path, provenance: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  checkpoint.write_json(str(folder / FILE), provenance)


def read(folder: pathlib.Path) -> dict | None:
  """The folder's provenance; None when it has none (a folder made before stages recorded it)."""
  path = folder / FILE
  return json.loads(path.read_text()) if path.is_file() else None


def config_changes(recorded: Mapping[str, Any], config: Any) -> list[str]:
  """'field: recorded -> asked' for every compared field whose value differs, dotted names."""
  old = config_lib.flat_fields(recorded['config'])
  new = config_lib.flat_fields(_plain(config.to_dict()))
  return [f'{name}: {_show(old.get(name))} -> {_show(new.get(name))}'
          for name in sorted(old.keys() | new.keys())
          if name.split('.')[0] not in NOT_COMPARED and old.get(name) != new.get(name)]


def changed_inputs(recorded: Mapping[str, Any], inputs: Mapping[str, pathlib.Path]) -> list[str]:
  """The sources whose completion is not the one the recorded run read (made again, removed, or
  not read then)."""
  return [source for source, folder in inputs.items()
          if recorded['inputs'].get(source, '') != digest(folder)]


def _plain(value: Any) -> Any:
  """JSON's view of a config value (tuples become lists), so recorded and current compare."""
  return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
  return '(none)' if value is None else json.dumps(value)[:40]
