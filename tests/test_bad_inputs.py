"""Bad inputs stop with one line on stderr and a non-zero exit: never a traceback, never a
half-written output. The corpus is tests/data/bad_inputs/ (its README says what each file is)."""
import io
import json
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys

import pytest

from rlhf_jax import checkpoint, config_lib, hf, stages
from rlhf_jax import main as main_lib
from rlhf_jax.hf import cli as hf_cli
from rlhf_jax.data import __main__ as data_cli
from rlhf_jax.data.tokenizers import train_sentencepiece

REPO = pathlib.Path(__file__).resolve().parents[1]
CORPUS = REPO / 'tests' / 'data' / 'bad_inputs'
# Files that are bad as JSON, whatever record kind or source they are read as.
BAD_JSON = ['big_integer.jsonl', 'deep_nesting.jsonl', 'float_overflow.jsonl',
            'invalid_utf8.jsonl']
# The first line of each file at fault and the error's field and message.
EXPECTED = {
    'big_integer.jsonl': ':1: json: integer with 5000 digits is too large',
    'deep_nesting.jsonl': ':1: json: arrays or objects are nested too deeply',
    'float_overflow.jsonl': ':1: json: number 1e400 is out of the float range',
    'invalid_utf8.jsonl': ':1: utf-8: invalid byte 0xe9',
}


def _data_cli(*args) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  status = data_cli.main(['data', *args], out, err)
  return status, out.getvalue(), err.getvalue()


def _one_line(stderr: str) -> str:
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in stderr, stderr
  return lines[0]


def _error_line(stderr: str) -> str:
  """The error of a `rlhf_jax.main` run: its last line (libraries may warn before it)."""
  assert 'Traceback' not in stderr, stderr
  return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize('name', BAD_JSON)
def test_bad_json_in_check_and_convert(name, tmp_path):
  path = str(CORPUS / name)
  for fmt in ('text', 'prompts', 'hh-rlhf', 'tldr'):
    status, out, err = _data_cli('check', f'--format={fmt}', path)
    assert status == 1 and not out
    assert _one_line(err).startswith(path + EXPECTED[name])
  dest = tmp_path / 'out.jsonl'
  status, _, err = _data_cli('convert', '--format=hh-rlhf', path, str(dest))
  assert status == 1 and EXPECTED[name] in _one_line(err)
  assert not os.listdir(tmp_path)


@pytest.fixture(scope='module', name='tokenizer_dir')
def _tokenizer_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('tok')
  train_sentencepiece([f'A fine record number {i}.' for i in range(200)], vocab_size=100,
                      out_dir=out)
  return out


def _main(*args, cwd=REPO, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'rlhf_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600, check=False, **kwargs)


@pytest.mark.parametrize('name', ['big_integer.jsonl', 'deep_nesting.jsonl',
                                  'float_overflow.jsonl'])
@pytest.mark.slow
def test_bad_json_in_a_stage(name, tokenizer_dir, tmp_path):
  path = CORPUS / name
  result = _main('--config=configs/pretrain.py', f'--workdir={tmp_path / "run"}',
                 f'--config.data.tokenizer={tokenizer_dir}', f'--config.data.pretrain={path}',
                 f'--config.data.pretrain_valid={path}', '--config.total_steps=2')
  assert result.returncode == 1
  assert _error_line(result.stderr).startswith(f'error: {path}{EXPECTED[name]}')
  assert not (tmp_path / 'run' / 'pretrain' / 'summary.json').exists()


def test_check_of_a_source_whose_records_are_all_skipped(tmp_path):
  path = str(CORPUS / 'hh_all_skipped.jsonl')
  status, out, err = _data_cli('check', '--format=hh-rlhf', path)
  assert status == 1 and not out
  assert _one_line(err) == (f'{path}: file: no usable records: all 3 were skipped, first: '
                            f'{path}:1: chosen and rejected replies are identical')
  status, _, err = _data_cli('convert', '--format=hh-rlhf', path, str(tmp_path / 'out.jsonl'))
  assert status == 1 and 'no usable records' in _one_line(err) and not os.listdir(tmp_path)


@pytest.fixture(name='hh_file')
def _hh_file(tmp_path):
  path = tmp_path / 'hh.jsonl'
  turn = '\n\nHuman: Say hi.\n\nAssistant:'
  path.write_text(json.dumps({'chosen': turn + ' Hi.', 'rejected': turn + ' No.'}) + '\n')
  return path


def test_convert_destinations_that_cannot_be_written(hh_file, tmp_path):
  source = hh_file.read_bytes()
  (tmp_path / 'folder').mkdir()
  cases = {str(tmp_path / 'folder'): 'file: is a directory, expected a file path',
           str(hh_file / 'x.jsonl'): 'file: cannot write: ',
           str(hh_file): 'file: is also the source; the source would be overwritten'}
  for dest, message in cases.items():
    status, _, err = _data_cli('convert', '--format=hh-rlhf', str(hh_file), dest)
    assert status == 1 and _one_line(err).startswith(f'{dest}: {message}')
  assert hh_file.read_bytes() == source
  assert sorted(os.listdir(tmp_path)) == ['folder', 'hh.jsonl']
  assert not os.listdir(tmp_path / 'folder')


def _small_files():
  """A child whose files may not grow past 64 bytes: a full disk, as write() sees it."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


@pytest.mark.slow
def test_convert_on_a_full_disk_leaves_nothing(hh_file, tmp_path):
  dest = tmp_path / 'out' / 'rankings.jsonl'
  result = subprocess.run([sys.executable, '-m', 'rlhf_jax.data', 'convert', '--format=hh-rlhf',
                           str(hh_file), str(dest)], capture_output=True, text=True, cwd=REPO,
                          timeout=600, check=False, preexec_fn=_small_files)
  assert result.returncode == 1
  assert _one_line(result.stderr) == f'{dest}: file: cannot write: File too large'
  assert not os.listdir(dest.parent)


@pytest.mark.parametrize('field, value, message', [
    ('model.n_heads', 0, 'policy model: n_heads=0 must be positive'),
    ('model.n_kv_heads', 0, 'policy model: n_kv_heads=0 must be positive'),
    ('batch_size', 0, 'batch_size=0 must be at least 1'),
    ('batch_size', -32, 'batch_size=-32 must be at least 1'),
    ('total_steps', -1, 'total_steps=-1 must not be negative'),
    ('log_every', 0, 'log_every=0 must be at least 1'),
])
def test_config_values_that_cannot_run(field, value, message):
  config = config_lib.load_config(str(REPO / 'configs' / 'sft.py'))
  config.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=f'^{message}$'):
    config_lib.validate(config)


@pytest.mark.parametrize('spec, field, value, message', [
    ('sft.py', 'mesh.fsdp', -1,
     "mesh {'data': -1, 'fsdp': -1, 'tensor': 1}: at most one axis may be -1 (all remaining "
     "devices)"),
    ('rm.py', 'k_max', 1, 'k_max=1 must be at least 2: a ranking orders two or more completions'),
    ('sample.py', 'k_min', 10, 'k_min=10, k_max=9: need 2 <= k_min <= k_max'),
])
def test_config_rules_across_fields(spec, field, value, message):
  config = config_lib.load_config(str(REPO / 'configs' / spec))
  config.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    config_lib.validate(config)


def test_a_model_that_its_init_stage_does_not_have(tmp_path):
  """Found before any input stage runs: against the shipped config that would make the input,
  and against a completed input's summary."""
  config = config_lib.load_config(str(REPO / 'configs' / 'ppo.py'))
  config.workdir, config.model.n_layers = str(tmp_path), 2
  message = ("model: n_layers=2 but init_from='sft_init' has n_layers=4 "
             f'({REPO}/configs/sft_init.py:tiny); its checkpoint would not load')
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    stages.check_inputs(config)
  made = config_lib.model_config_dict('tiny')
  made.n_layers = 6
  (tmp_path / 'sft_init').mkdir()
  checkpoint.write_summary(str(tmp_path / 'sft_init'), {'model': made.to_dict()})
  config.model.n_layers = 4
  message = (f"model: n_layers=4 but init_from='sft_init' has n_layers=6 "
             f'({tmp_path}/sft_init/summary.json); its checkpoint would not load')
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    stages.check_inputs(config)


@pytest.mark.parametrize('stage', ['sample', 'eval'])
def test_a_policy_of_another_geometry_than_the_sampler(stage, tmp_path):
  """The sample and eval stages load their policies at their own geometry: a completed policy
  stage of another is refused before anything runs (eval: only the stages it would read)."""
  config = config_lib.load_config(str(REPO / 'configs' / f'{stage}.py'))
  config.workdir = str(tmp_path)
  stages.check_inputs(config)
  made = config_lib.model_config_dict('tiny')
  made.n_layers = 6
  policy = 'pretrain' if stage == 'sample' else 'ppo'
  (tmp_path / policy).mkdir()
  checkpoint.write_summary(str(tmp_path / policy), {'model': made.to_dict()})
  message = (f"model: n_layers=4 but policies={policy!r} has n_layers=6 "
             f'({tmp_path}/{policy}/summary.json); its checkpoint would not load')
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    stages.check_inputs(config)
  if stage == 'eval':
    config.policies = 'sft'
    stages.check_inputs(config)


def test_a_reward_model_k_max_below_the_rankings_to_come(tmp_path):
  config = config_lib.load_config(str(REPO / 'configs' / 'rm.py'))
  config.workdir, config.k_max = str(tmp_path), 5
  message = ('k_max=5 but the sample stage ranks up to k_max=9 completions '
             f'({REPO}/configs/sample.py:tiny)')
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    stages.check_inputs(config)


@pytest.mark.parametrize('field, value, message', [
    ('mesh.fsdp', 16, "topology v5p:4x4x4: mesh: {'data': 8, 'fsdp': 16, 'tensor': 1} needs 128 "
     'devices, have 64'),
    ('minibatch_size', 32, 'minibatch_size=32 is not divisible by the mesh batch axes (data x '
     'fsdp = 64)'),
])
def test_a_dry_run_splits_the_batches_over_the_target_slice(field, value, message):
  """The 8 test devices cannot form the 1.3B mesh: the dry run checks it on its v5p slice."""
  config = config_lib.load_config(str(REPO / 'configs' / 'ppo_ptx.py') + ':1.3b')
  main_lib.check_batches(config)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    main_lib.check_batches(config)


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path):
  result = _main('--config=configs/no_such_stage.py', '--dry_run')
  assert result.returncode == 2
  assert _error_line(result.stderr).startswith(
      'error: configs/no_such_stage.py: no such config file (relative paths start in the current '
      'folder; the shipped configs are in ')
  result = _main('--config=configs/sft.py', '--config.batch_sise=3', '--dry_run')
  assert result.returncode == 2
  assert _error_line(result.stderr) == ('error: the config has no field \'batch_sise\'; Did '
                                        'you mean "batch_size" instead of "batch_sise"?')
  # A workdir that cannot be created (read-only, or under a file as here).
  (tmp_path / 'file').write_text('')
  result = _main('--config=configs/world.py', f'--workdir={tmp_path / "file" / "run"}')
  assert result.returncode == 1
  assert 'Not a directory' in _error_line(result.stderr)


def _gpt2_folder(path, **changes):
  """config.json of a tiny GPT-2 (no weights needed: its sizes are checked first)."""
  path.mkdir()
  cfg = {'model_type': 'gpt2', 'vocab_size': 100, 'n_positions': 64, 'n_embd': 32,
         'n_layer': 2, 'n_head': 4, **changes}
  (path / 'config.json').write_text(json.dumps(cfg))
  return str(path)


@pytest.mark.parametrize('changes, message', [
    ({'n_head': 0}, 'n_head=0 must be a positive integer'),
    ({'n_embd': '32'}, 'n_embd="32" must be a positive integer'),
    ({'n_layer': 2.5}, 'n_layer=2.5 must be a positive integer'),
    ({'vocab_size': True}, 'vocab_size=true must be a positive integer'),
])
def test_hf_inspect_of_bad_sizes(changes, message, tmp_path):
  folder = _gpt2_folder(tmp_path / 'm', **changes)
  out, err = io.StringIO(), io.StringIO()
  assert hf_cli.main(['hf', 'inspect', folder], out, err) == 1
  assert _one_line(err.getvalue()) == f'error: {folder}/config.json: {message}'


@pytest.mark.parametrize('index, message', [
    ([1, 2], 'expected a JSON object'),
    ({'weight_map': ['model-1.safetensors']}, 'weight_map must be an object'),
    ({'weight_map': {'transformer.wte.weight': 3}}, 'names shard 3, not a file inside'),
    ({'weight_map': {'transformer.wte.weight': '/etc/hostname'}},
     'names shard "/etc/hostname", not a file inside'),
])
def test_hf_malformed_index(index, message, tmp_path):
  from rlhf_jax.hf.importer import load_hf
  folder = _gpt2_folder(tmp_path / 'm')
  (tmp_path / 'm' / 'model.safetensors.index.json').write_text(json.dumps(index))
  with pytest.raises(hf.HFError, match=message):
    load_hf(folder)


def test_hf_truncated_safetensors(tmp_path):
  from rlhf_jax.hf.importer import load_hf
  folder = _gpt2_folder(tmp_path / 'm')
  (tmp_path / 'm' / 'model.safetensors').write_bytes((10**6).to_bytes(8, 'little') + b'{}')
  with pytest.raises(hf.HFError, match='header size 1000000 exceeds the file size 10'):
    load_hf(folder)


def test_hf_export_to_a_file(tmp_path):
  from rlhf_jax.hf.exporter import export_hf
  out = tmp_path / 'model'
  out.write_text('not a folder')
  config = config_lib.to_model_config(config_lib.model_config_dict('tiny'))
  with pytest.raises(hf.HFError, match='model: exists and is not a folder'):
    export_hf({}, config, out, pad_id=0)
  assert out.read_text() == 'not a folder'
