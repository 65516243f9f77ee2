"""Command line for Hugging Face folders.

  python -m rlhf_jax.hf export --checkpoint=<workdir>/<stage> --out=DIR
        [--config=configs/<stage>.py[:geometry]] [--ppo_params=ema|policy] [--tokenizer=DIR]
        [--dtype=...] [--push_to_hub=REPO]
      Writes the model a completed stage trained as a folder transformers loads, with its tokenizer
      and a model card (README.md: the eval table from <workdir>/eval/report.json when the eval
      stage has run, the stage's config and summary). SFT, PPO and PPO-ptx policies load with
      AutoModelForCausalLM (of a PPO stage, its kept iteration's EMA policy, or the raw one with
      --ppo_params=policy); the reward model loads with AutoModelForSequenceClassification and
      scores as the PPO stages saw it (minus its normalisation bias). The geometry is the one
      summary.json records; the config (default configs/<stage folder name>.py) gives the mesh and
      the data paths. --tokenizer defaults to the run's own (the config's data.tokenizer, else the
      mini world's in the workdir); a policy exported without one has no bos/eos ids, a reward
      model needs one (its pad id). --push_to_hub uploads the finished folder to the Hub repository
      REPO (created if missing; a Hub token from `hf auth login` or HF_TOKEN); in offline mode
      (HF_HUB_OFFLINE=1) it stops with the folder ready and exit status 1.
  python -m rlhf_jax.hf inspect DIR
      Prints the ModelConfig a Hugging Face folder imports as.
  python -m rlhf_jax.hf --help
      Prints this text and the flags.

Errors print one line on stderr. Exit status: 0 on success, 1 for a bad checkpoint or folder
(or a push that failed), 2 for a usage error.
"""
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import ml_collections
from absl import flags

from rlhf_jax import checkpoint, config_lib, sharding
from rlhf_jax.hf import HFError, model_card
from rlhf_jax.hf.exporter import export_hf
from rlhf_jax.hf.importer import hf_model_config
from rlhf_jax.models import ModelConfig
from rlhf_jax.stages import common, provenance
from rlhf_jax.stages import eval as eval_stage

COMMANDS = ('export', 'inspect')
EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE = 0, 1, 2


def _flag_values() -> flags.FlagValues:
  """Fresh flags per call (not absl's global FLAGS) so main() can run many times in tests."""
  fv = flags.FlagValues()
  flags.DEFINE_string('checkpoint', None, 'Completed stage folder <workdir>/<stage>.',
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder (must not exist or be empty).', flag_values=fv)
  flags.DEFINE_string('config', None, 'Stage config file[:geometry] (default: '
                      'configs/<stage folder name>.py).', flag_values=fv)
  flags.DEFINE_enum('ppo_params', None, list(eval_stage.PPO_PARAMS),
                    'Which policy of a PPO stage: its EMA (default) or the raw one.',
                    flag_values=fv)
  flags.DEFINE_string('tokenizer', None, 'Tokenizer to ship with the model (HF folder or '
                      'sentencepiece model; default: the run\'s own).', flag_values=fv)
  flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'],
                    'Tensor dtype (default: the model param dtype).', flag_values=fv)
  flags.DEFINE_string('push_to_hub', None, 'Hugging Face Hub repository (user/name) to upload '
                      'the exported folder to.', flag_values=fv)
  flags.DEFINE_bool('help', False, 'Prints the commands and flags.', short_name='h',
                    flag_values=fv)
  return fv


def _shipped_model(config: ml_collections.ConfigDict, summary: dict) -> tuple[ModelConfig, str]:
  """(geometry, head) of the model the stage trained: summary.json's geometry (the config's for
  a summary written before stages recorded it)."""
  roles = config_lib.model_roles(config)
  if not roles:
    raise HFError(f'stage {config.stage!r} trains no model to export')
  model, head = next(iter(roles.values()))  # the first role is the trained one
  if 'model' in summary:
    model = config_lib.to_model_config(ml_collections.ConfigDict(summary['model']))
  return model, head


def _reward_params(stage_dir: str, model: ModelConfig, mesh, bias: float) -> Any:
  """The reward model's params with `bias` taken off its head, so it scores as PPO saw it."""
  abstract, shardings = common.param_shardings(model, 'scalar', mesh)
  params = checkpoint.load_params(
      stage_dir, abstract, shardings,
      fingerprint=checkpoint.fingerprint({'reward': (model, 'scalar')}))
  head = params['scalar_head']
  return {**params, 'scalar_head': {**head, 'bias': head['bias'] - bias}}


def _report(workdir: str) -> dict | None:
  path = pathlib.Path(workdir) / 'eval' / 'report.json'
  return json.loads(path.read_text()) if path.exists() else None


def export_checkpoint(stage_dir: str, config: ml_collections.ConfigDict, config_source: str,
                      out_dir: str, *, ppo_params: str | None = None,
                      tokenizer_dir: str | None = None, dtype: str | None = None) -> str:
  """Exports the model a completed stage of `config` (in config.workdir) trained, loaded sharded
  over the config's mesh, with its model card; returns out_dir. `ppo_params` picks a PPO
  stage's policy ('ema', the default, or 'policy')."""
  summary = checkpoint.read_summary(stage_dir)
  if summary is None:
    raise FileNotFoundError(f'{stage_dir}: stage not complete (no summary.json)')
  ppo_stage = summary.get('stage') in config_lib.PPO_STAGES
  if ppo_params is not None and not ppo_stage:
    raise HFError(f'{stage_dir}: --ppo_params picks the policy of a PPO stage; this is not one')
  ppo_params = ppo_params or 'ema'
  model, head = _shipped_model(config, summary)
  reward_bias = summary.get('reward_bias')
  if head == 'scalar' and reward_bias is None:
    raise HFError(f'{stage_dir}: summary.json has no reward_bias; rerun the rm stage')
  if head == 'scalar' and tokenizer_dir is None:
    raise HFError(f'{stage_dir}: the run\'s tokenizer is gone; pass --tokenizer (a reward model '
                  'needs its pad id)')
  mesh = sharding.make_mesh(dict(config.mesh))
  if head == 'lm':
    params = eval_stage.policy_params(stage_dir, model, mesh, ppo_params)
  else:
    params = _reward_params(stage_dir, model, mesh, reward_bias)
  card = model_card.model_card(
      config.stage, head, summary, config, config_source, _report(config.workdir),
      trained_config=(provenance.read(pathlib.Path(stage_dir)) or {}).get('config'),
      ppo_params=ppo_params if ppo_stage else None, reward_bias=reward_bias)
  return export_hf(params, model, out_dir, head=head, tokenizer_dir=tokenizer_dir, dtype=dtype,
                   model_card=card)


def run_tokenizer(config: ml_collections.ConfigDict) -> str | None:
  """The tokenizer the run of `config` used, if it is still there: the config's data.tokenizer,
  else the mini world's in config.workdir."""
  path = common.data_paths(config)['tokenizer']
  return os.fspath(path) if path.exists() else None


def push_to_hub(folder: str, repo: str) -> None:
  """Uploads `folder` to the Hub model repository `repo`, creating it if missing; HFError (one
  line) when offline or the Hub refuses."""
  import huggingface_hub  # Slow to import; only a push needs it.
  if huggingface_hub.constants.HF_HUB_OFFLINE:
    raise HFError(f'{folder}: exported but not pushed to {repo}: offline mode (HF_HUB_OFFLINE) '
                  f'is on; upload this folder when online')
  api = huggingface_hub.HfApi()
  try:
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=folder)
  except Exception as e:  # the Hub client signals network and auth failures with many types
    raise HFError(f'{folder}: exported but not pushed to {repo}: '
                  f'{" ".join(str(e).split())[:300]}') from None


def _help(fv: flags.FlagValues) -> str:
  """This module's docstring and every flag with its help text."""
  lines = [f'  --{f.name}: {f.help}' for f in fv.get_flags_for_module(__name__)]
  return __doc__.rstrip() + '\n\nFlags:\n' + '\n'.join(lines)


def _usage_error(message: str, err: TextIO) -> int:
  print(f'error: {message} (python -m rlhf_jax.hf --help lists the commands and flags)', file=err)
  return EXIT_USAGE


def main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
  """Runs the command in argv (argv[0] is the program name); returns the exit status."""
  fv = _flag_values()
  try:
    args = fv(list(argv))[1:]
  except flags.Error as e:
    return _usage_error(str(e), err)
  if fv.help:
    print(_help(fv), file=out)
    return EXIT_OK
  if not args or args[0] not in COMMANDS:
    return _usage_error(f'expected a command, one of {COMMANDS}', err)
  try:
    if args[0] == 'inspect':
      if len(args) != 2:
        return _usage_error('inspect needs one DIR', err)
      print(hf_model_config(args[1]), file=out)
      return EXIT_OK
    if not fv.checkpoint or not fv.out:
      return _usage_error('export needs --checkpoint and --out', err)
    stage_dir = os.path.normpath(fv.checkpoint)
    config_source = fv.config or os.path.join('configs', f'{os.path.basename(stage_dir)}.py')
    config = config_lib.load_config(config_source)
    config.workdir = os.path.dirname(os.path.abspath(stage_dir))
    path = export_checkpoint(stage_dir, config, config_source, fv.out, ppo_params=fv.ppo_params,
                             tokenizer_dir=fv.tokenizer or run_tokenizer(config), dtype=fv.dtype)
    print(f'{path}: exported', file=out)
    if fv.push_to_hub:
      push_to_hub(path, fv.push_to_hub)
      print(f'{path}: pushed to https://huggingface.co/{fv.push_to_hub}', file=out)
  except (HFError, config_lib.ConfigError, checkpoint.CheckpointMismatch,
          FileNotFoundError) as e:
    print(f'error: {e}', file=err)
    return EXIT_BAD_INPUT
  return EXIT_OK
