"""`python -m rlhf_jax.data check|convert`: summaries for good files, one-line errors for bad."""
import io
import json
import pathlib
import subprocess
import sys

import pytest

from rlhf_jax.data import __main__ as cli
from rlhf_jax.data import records

REPO = pathlib.Path(__file__).resolve().parents[1]
RANKING = {'prompt': 'Name a colour.', 'completions': [' red', ' dog'], 'ranks': [0, 1],
           'labeler': 'L1'}
HH = {'chosen': '\n\nHuman: Hi\n\nAssistant: Hello.', 'rejected': '\n\nHuman: Hi\n\nAssistant: Go.'}
TLDR = {'info': {'post': 'p', 'title': 't', 'subreddit': 's'}, 'choice': 0, 'worker': 'w',
        'summaries': [{'text': ' a'}, {'text': ' b'}]}


def _run(*argv):
  out, err = io.StringIO(), io.StringIO()
  status = cli.main(['rlhf_jax.data', *map(str, argv)], out, err)
  return status, out.getvalue(), err.getvalue()


def _file(tmp_path, content, name='data.jsonl'):
  path = tmp_path / name
  if isinstance(content, list):
    content = ''.join(json.dumps(row) + '\n' for row in content)
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  return path


def _ranking(**changes):
  return json.dumps({**RANKING, **changes})


@pytest.mark.parametrize('content, expected', [
    ('{"prompt": "x", ', '2: json: invalid JSON: Expecting property name'),
    (json.dumps({k: v for k, v in RANKING.items() if k != 'ranks'}), '2: ranks: missing'),
    (_ranking(labeler=3), '2: labeler: expected a string, got integer 3'),
    (_ranking(score=0.5), '2: score: unknown field for rankings'),
    (_ranking(prompt=''), '2: prompt: is empty'),
    (_ranking(completions=['a'], ranks=[0]), '2: completions: has 1 entries, a ranking needs >= 2'),
    (_ranking(ranks=[0, 1, 2]), '2: ranks: has 3 entries but completions has 2'),
    (_ranking(ranks=[0, 0.5]), '2: ranks[1]: expected an integer, got number 0.5'),
    (_ranking(ranks=['0', 1]), '2: ranks[0]: expected an integer, got string'),
    (_ranking(ranks=[1, 1]), '2: ranks: all completions tie'),
    (b'{"prompt": "\xff"}', '2: utf-8: invalid byte 0xff at byte 13'),
])
def test_bad_record_prints_file_line_field_and_fails(tmp_path, content, expected):
  raw = content if isinstance(content, bytes) else content.encode()
  path = _file(tmp_path, _ranking().encode() + b'\n' + raw + b'\n')
  status, out, err = _run('check', '--format=rankings', path)
  assert status == cli.EXIT_BAD_DATA
  assert out == ''
  assert err.startswith(f'{path}:{expected}')
  assert err.count('\n') == 1 and 'Traceback' not in err


@pytest.mark.parametrize('content, expected', [
    (b'', 'file: no records (the file is empty or blank)'),
    (None, 'file: No such file or directory'),
])
def test_empty_and_missing_files_fail(tmp_path, content, expected):
  path = _file(tmp_path, content) if content is not None else tmp_path / 'missing.jsonl'
  status, _, err = _run('check', '--format=text', path)
  assert status == cli.EXIT_BAD_DATA
  assert err == f'{path}: {expected}\n'


def test_good_files_print_a_summary_and_bad_ones_still_fail(tmp_path):
  good = _file(tmp_path, [RANKING, {**RANKING, 'completions': ['a', 'b', 'c', ''],
                                    'ranks': [0, 1, 1, 3], 'labeler': 'L2'}], 'good.jsonl')
  bad = _file(tmp_path, '{}\n', 'bad.jsonl')
  status, out, err = _run('check', '--format=rankings', good, bad)
  assert status == cli.EXIT_BAD_DATA
  assert err == f'{bad}:1: prompt: missing\n'
  assert out.splitlines() == [
      f'{good}: OK', '  2 rankings records', '  prompt: chars mean 14.0, max 14',
      '  completions: chars mean 1.8, max 4', '  K: 2 x 1, 4 x 1',
      '  records with ties: 1 (50.0%)', '  labelers: 2']


@pytest.mark.parametrize('fmt, rows, expected', [
    ('text', [{'text': 'abc'}, {'text': 'a'}], ['2 text records', 'text: chars mean 2.0, max 3']),
    ('demonstrations', [{'prompt': 'p', 'completion': 'abc'}],
     ['1 demonstrations records', 'prompt: chars mean 1.0, max 1',
      'completion: chars mean 3.0, max 3']),
    ('prompts', [{'prompt': 'p', 'customer': c, 'category': g}
                 for c, g in (('c1', 'qa'), ('c1', 'qa'), ('c2', 'rewrite'))],
     ['3 prompts records', 'prompt: chars mean 1.0, max 1', 'customers: 2',
      'categories: qa x 2, rewrite x 1']),
    ('hh-rlhf', [HH, {**HH, 'rejected': HH['chosen']}],
     ['1 rankings records', 'prompt: chars mean 23.0, max 23']),
    ('tldr', [TLDR], ['1 rankings records', 'prompt: chars mean 38.0, max 38']),
])
def test_each_format_is_summarised(tmp_path, fmt, rows, expected):
  status, out, err = _run('check', f'--format={fmt}', _file(tmp_path, rows))
  assert (status, err) == (cli.EXIT_OK, '')
  lines = [line.strip() for line in out.splitlines()]
  assert lines[1:1 + len(expected)] == expected
  if fmt == 'hh-rlhf':
    assert lines[-1].startswith('skipped 1 source records, first: ')


def test_source_format_errors_name_the_source_field(tmp_path):
  path = _file(tmp_path, [TLDR, {**TLDR, 'choice': 5}])
  status, _, err = _run('check', '--format=tldr', path)
  assert (status, err) == (cli.EXIT_BAD_DATA, f'{path}:2: choice: 5 is outside [0, 2)\n')


def test_convert_writes_a_checkable_records_file(tmp_path):
  src = _file(tmp_path, [HH, HH], 'hh.jsonl')
  dest = tmp_path / 'out' / 'demos.jsonl'
  status, out, _ = _run('convert', '--format=hh-rlhf', '--kind=demonstrations', src, dest)
  assert status == cli.EXIT_OK and 'wrote 2 demonstrations records' in out
  assert [r['completion'] for r in records.read_records(dest, 'demonstrations')] == [' Hello.'] * 2
  status, _, err = _run('convert', '--format=tldr', src, tmp_path / 'never.jsonl')
  assert status == cli.EXIT_BAD_DATA and err.startswith(f'{src}:1: info: missing')
  assert not (tmp_path / 'never.jsonl').exists()


@pytest.mark.parametrize('argv, message', [
    ([], 'expected a command'),
    (['show', '--format=text', 'x'], 'expected a command'),
    (['check', 'x'], '--format is required'),
    (['check', '--format=csv', 'x'], 'value should be one of'),
    (['check', '--format=text'], 'no FILE given'),
    (['check', '--format=text', '--bogus', 'x'], 'Unknown command line flag'),
    (['convert', '--format=text', 'a', 'b'], 'convert needs --format in'),
])
def test_usage_errors_exit_2(argv, message):
  status, out, err = _run(*argv)
  assert (status, out) == (cli.EXIT_USAGE, '')
  assert message in err and 'usage: python -m rlhf_jax.data check' in err


def test_help_lists_the_formats():
  status, out, _ = _run('--help')
  assert status == cli.EXIT_OK and 'hh-rlhf' in out


@pytest.mark.slow
def test_module_entry_point_has_no_traceback(tmp_path):
  good = _file(tmp_path, [RANKING], 'good.jsonl')
  bad = _file(tmp_path, '{"prompt": "x"}\n', 'bad.jsonl')
  result = subprocess.run(
      [sys.executable, '-m', 'rlhf_jax.data', 'check', '--format=rankings', str(good), str(bad)],
      cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == cli.EXIT_BAD_DATA
  assert result.stdout.startswith(f'{good}: OK\n  1 rankings records')
  assert result.stderr == f'{bad}:1: completions: missing\n'
