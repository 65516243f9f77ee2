"""Command line for Hugging Face folders.

  python -m rlhf_jax.hf export --checkpoint=<workdir>/<stage> --out=DIR
        [--config=configs/<stage>.py[:geometry]] [--role=ROLE] [--tokenizer=DIR] [--dtype=...]
      Writes a completed stage's model as a folder transformers loads: AutoModelForCausalLM for
      an 'lm' role (policy), AutoModelForSequenceClassification for a 'scalar' one (reward).
      The stage config gives the model's architecture (checkpoints store only its geometry); it
      defaults to configs/<stage folder name>.py. --role picks one of its models (default: the
      first, i.e. the trained one). --tokenizer defaults to the run's own (the config's
      data.tokenizer, else the mini world's in the workdir) when it is there; without one,
      config.json names no bos/eos ids.
  python -m rlhf_jax.hf inspect DIR
      Prints the ModelConfig a Hugging Face folder imports as.
  python -m rlhf_jax.hf --help
      Prints this text and the flags.

Errors print one line on stderr. Exit status: 0 on success, 1 for a bad checkpoint or folder,
2 for a usage error.
"""
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TextIO

import flax.linen as nn
from absl import flags

from rlhf_jax import checkpoint, config_lib, sharding, state
from rlhf_jax.hf import HFError
from rlhf_jax.hf.exporter import export_hf
from rlhf_jax.hf.importer import hf_model_config

COMMANDS = ('export', 'inspect')
HELP_FLAGS = ('-h', '-help', '--help')
EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE = 0, 1, 2


def _flag_values() -> flags.FlagValues:
  """Fresh flags per call (not absl's global FLAGS) so main() can run many times in tests."""
  fv = flags.FlagValues()
  flags.DEFINE_string('checkpoint', None, 'Completed stage folder <workdir>/<stage>.',
                      flag_values=fv)
  flags.DEFINE_string('out', None, 'Output folder (must not exist or be empty).', flag_values=fv)
  flags.DEFINE_string('config', None, 'Stage config file[:geometry] (default: '
                      'configs/<stage folder name>.py).', flag_values=fv)
  flags.DEFINE_string('role', None, 'Model role of the stage (policy, reward, ...).',
                      flag_values=fv)
  flags.DEFINE_string('tokenizer', None, 'Tokenizer to ship with the model (HF folder or '
                      'sentencepiece model; default: the run\'s own).', flag_values=fv)
  flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16', 'float16'],
                    'Tensor dtype (default: the model param dtype).', flag_values=fv)
  return fv


def export_checkpoint(stage_dir: str, config, out_dir: str, *, role: str | None = None,
                      tokenizer_dir: str | None = None, dtype: str | None = None) -> str:
  """Loads one model of a completed stage (sharded over the config's mesh) and exports it."""
  roles = config_lib.model_roles(config)
  if config.stage in config_lib.PPO_STAGES:
    raise HFError(f'{stage_dir}: exporting PPO stages is not supported yet')
  role = role or next(iter(roles), None)
  if role not in roles:
    raise HFError(f'{stage_dir}: stage {config.stage!r} has no role {role!r} '
                  f'(roles: {", ".join(roles)})')
  model, head = roles[role]
  boxed = state.abstract_params(model, head)
  mesh = sharding.make_mesh(dict(config.mesh))
  params = checkpoint.load_params(stage_dir, nn.unbox(boxed),
                                  sharding.logical_shardings(boxed, mesh))
  return export_hf(params, model, out_dir, head=head, tokenizer_dir=tokenizer_dir, dtype=dtype)


def run_tokenizer(stage_dir: str, config) -> str | None:
  """The tokenizer a stage of `config` in `stage_dir` was trained with, if it is still there:
  the config's data.tokenizer, else the mini world's in the stage's workdir."""
  from rlhf_jax.stages import world  # the stage modules are only needed here
  data = config.get('data') or {}
  workdir = pathlib.Path(os.path.normpath(stage_dir)).parent
  path = data.get('tokenizer') or world.paths(workdir / 'data')['tokenizer']
  return os.fspath(path) if os.path.exists(path) else None


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
  if any(a in HELP_FLAGS for a in argv[1:]):
    print(_help(fv), file=out)
    return EXIT_OK
  try:
    args = fv(list(argv))[1:]
  except flags.Error as e:
    return _usage_error(str(e), err)
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
    stage = os.path.basename(os.path.normpath(fv.checkpoint))
    config = config_lib.load_config(fv.config or os.path.join('configs', f'{stage}.py'))
    path = export_checkpoint(fv.checkpoint, config, fv.out, role=fv.role,
                             tokenizer_dir=fv.tokenizer or run_tokenizer(fv.checkpoint, config),
                             dtype=fv.dtype)
  except (HFError, config_lib.ConfigError, checkpoint.CheckpointMismatch,
          FileNotFoundError) as e:
    print(f'error: {e}', file=err)
    return EXIT_BAD_INPUT
  print(f'{path}: exported', file=out)
  return EXIT_OK
