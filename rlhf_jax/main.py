"""Entry point: `python -m rlhf_jax.main --config=configs/<stage>.py[:<geometry>] [--workdir=DIR]`.

Parses and validates the config and its fit to the stage's inputs (before anything is
compiled), then either describes the run (`--dry_run`) or runs the stage, producing any missing
inputs first.
"""
import pathlib
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rlhf_jax import config_lib, distributed, sharding, state

FLAGS = flags.FLAGS
DEFAULT_CONFIG = 'configs/ppo_ptx.py'  # the main job
config_flags.DEFINE_config_file('config', DEFAULT_CONFIG, 'Stage config file[:geometry].')
flags.DEFINE_string('workdir', None, 'Run directory (overrides config.workdir).')
flags.DEFINE_bool('dry_run', False, 'Validate and describe the run without allocating parameters.')
flags.DEFINE_bool('force', False, 'Re-run the stage even if its folder is complete.')
flags.DEFINE_string('reuse_from', None, 'A workdir whose complete stages this stage reads are '
                    'linked into --workdir first (a sweep trains only the stage it varies).')


def describe(config) -> str:
  """Geometry, parameter count per model role and mesh layout, from shapes alone."""
  lines = [f'stage {config.stage}  workdir {config.workdir}']
  for role, (model, head) in config_lib.model_roles(config).items():
    n = state.count_params(state.abstract_params(model, head))
    lines.append(f'  {role:<9} {head:<6} {n / 1e6:>12,.1f}M params  layers {model.n_layers} '
                 f'd_model {model.d_model} heads {model.n_heads}/{model.kv_heads} d_ff {model.d_ff} '
                 f'vocab {model.vocab_size} ctx {model.max_len} {model.dtype}/{model.param_dtype}')
  n_dev = jax.device_count()
  shape = local_mesh(config)
  if shape is None:
    lines.append(f'  mesh {dict(config.mesh)} (needs more than the {n_dev} local device(s); '
                 'see `python -m rlhf_jax.aot` for target slices)')
  else:
    lines.append(f'  mesh {shape} over {n_dev} {jax.devices()[0].platform} device(s)')
  return '\n'.join(lines)


def local_mesh(config) -> dict[str, int] | None:
  """The config's mesh axis sizes over this machine's devices; None if they cannot form it."""
  try:
    return dict(zip(sharding.AXES, sharding.mesh_shape(dict(config.mesh), jax.device_count())))
  except ValueError:
    return None


def check_batches(config) -> None:
  """The batches' split over the mesh the run would have, as far as this machine can tell: over
  its devices when they can form the config's mesh, else over the slice the config names
  (`topology`), where a mesh that does not cover the slice is a ConfigError."""
  shape = local_mesh(config)
  if shape is None and config.get('topology'):
    try:
      shape = dict(zip(sharding.AXES, sharding.mesh_shape(
          dict(config.mesh), config_lib.topology_chips(config.topology))))
    except ValueError as e:
      raise config_lib.ConfigError(f'topology {config.topology}: {e}') from None
  if shape is not None:
    config_lib.validate_batches(config, shape['data'] * shape['fsdp'])


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)  # orbax and grain log every save and restore
  config = config_lib.loaded_from(
      FLAGS.config, config_flags.get_config_filename(FLAGS['config']))
  if FLAGS.workdir:
    config.workdir = FLAGS.workdir
  # Every stage's modules (orbax, grain, ...) take seconds to import: flag and config-file
  # errors, reported before main, do not wait for them.
  from rlhf_jax import stages
  try:
    if FLAGS.dry_run:
      stages.check_inputs(config)
      check_batches(config)
      overrides = [arg for arg in sys.argv[1:] if arg.startswith('--config.')]
      print(describe(config) + f'\n  overrides {" ".join(overrides) or "none"}')
      return
    config_lib.validate(config)
    distributed.initialize_from_flags()  # before any device is touched
    if FLAGS.reuse_from:
      linked = stages.link_inputs(config, FLAGS.reuse_from)
      print(f'[{config.stage}] reusing {", ".join(linked) or "nothing"} from {FLAGS.reuse_from}',
            flush=True)
    stages.run(config, force=FLAGS.force)
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except stages.STAGE_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except OSError as e:  # a read-only workdir, a full disk
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else text


HELP_FLAGS = ('--help', '-h', '--helpshort', '-?')


def help_text(spec: str) -> str:
  """The entry's usage, its flags, the fields of the config `spec` with their values (what
  `--config.FIELD=VALUE` overrides) and the geometries a config takes after its colon."""
  entry = sys.modules['__main__']
  flag_help = [FLAGS.main_module_help()]
  if entry.__name__ != __name__ and 'rlhf_jax.main' in sys.modules:  # aot: the config flags
    flag_help.append(FLAGS.module_help(sys.modules['rlhf_jax.main']))
  config = config_lib.load_config(spec)
  fields = [f'  --config.{name}={value!r}'
            for name, value in config_lib.flat_fields(config.to_dict()).items()]
  return '\n'.join([(entry.__doc__ or '').strip(), '', *flag_help, '',
                    f'Fields of {spec} (override any with --config.FIELD=VALUE):', *fields, '',
                    'Geometries (after the config\'s colon): '
                    + ', '.join(sorted(config_lib.GEOMETRIES))])


def _config_spec(argv) -> str:
  """The config spec of the command line (`--config=SPEC` or `--config SPEC`), else the
  default."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return DEFAULT_CONFIG


def parse_flags(argv):
  """absl flag parsing, but a config file that raises (unknown geometry, bad value) is a one-line
  error: config_flags wraps the exception with its traceback, so keep only its last line. `--help`
  prints `help_text` and exits 0."""
  config_path = _config_spec(argv).partition(':')[0]
  if not pathlib.Path(config_path).is_file():
    print(f'error: {config_lib.missing_config(config_path)}', file=sys.stderr)
    sys.exit(2)
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    try:
      print(help_text(_config_spec(argv)))
    except (config_lib.ConfigError, OSError) as e:
      print(f'error: {_last_line(str(e))}', file=sys.stderr)
      sys.exit(2)
    sys.exit(0)
  try:
    argv = FLAGS(argv)
    # config_flags defers a config file it cannot read until the config's first use.
    FLAGS.config.keys()
    return argv
  except AttributeError as e:  # an override of a field the config does not have
    # ml_collections wraps a KeyError whose message is the quoted name and, on a second line,
    # a suggestion: print that text, not its repr.
    cause = e.args[0] if e.args else e
    text = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
    print(f'error: the config has no field {"; ".join(text.splitlines())}', file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # a missing or unreadable config file
    print(f'error: {_last_line(str(e.__cause__ or e))}', file=sys.stderr)
    sys.exit(2)
  except (flags.Error, ValueError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if 'Error: ' in line), lines[-1])
    print(f'error: {cause.split("Error: ", 1)[-1]}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
