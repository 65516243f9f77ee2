"""Record validation, strict JSONL reading and atomic writing (rlhf_jax/data/records.py)."""
import json
import os
import stat

import numpy as np
import pytest

from rlhf_jax.data import records
from rlhf_jax.data.records import RecordError

GOOD = {
    'text': {'text': 'the red fox eats.'},
    'demonstrations': {'prompt': 'Name a colour.', 'completion': ' red'},
    'rankings': {'prompt': 'Name a colour.', 'completions': [' red', ' dog', ''],
                 'ranks': [0, 2, 1], 'labeler': 'L07'},
    'prompts': {'prompt': 'Name a colour.', 'customer': 'c12', 'category': 'generation'},
    'samples': {'prompt': 'Name a colour.', 'completions': [' red', '']},
}


def _ranking(**changes):
  return {**GOOD['rankings'], **changes}


def _write_lines(path, lines):
  path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
  return path


@pytest.mark.parametrize('kind', records.KINDS)
def test_good_record_round_trips(tmp_path, kind):
  extra = {'meta': {'split': 'train', 'score': 0.5}, 'id': 7}
  recs = [GOOD[kind], {**extra, **GOOD[kind]}]
  path = tmp_path / 'sub' / f'{kind}.jsonl'
  assert records.write_records(path, kind, recs) == 2
  got = records.read_records(path, kind)
  assert got == recs
  assert list(got[1]) == list(records.FIELDS[kind]) + ['id', 'meta']  # canonical key order


@pytest.mark.parametrize('record, field, message', [
    ({k: v for k, v in GOOD['rankings'].items() if k != 'labeler'}, 'labeler', 'missing'),
    (_ranking(prompt=''), 'prompt', 'is empty'),
    (_ranking(prompt=' \n'), 'prompt', 'is only whitespace'),
    (_ranking(prompt=3), 'prompt', 'expected a string, got integer 3'),
    (_ranking(labeler=None), 'labeler', 'expected a string, got null'),
    (_ranking(completions='abc'), 'completions', 'expected an array, got string'),
    (_ranking(completions=['a'], ranks=[0]), 'completions', 'has 1 entries'),
    (_ranking(completions=['a', 2], ranks=[0, 1]), 'completions[1]', 'expected a string'),
    (_ranking(ranks=[0, 1]), 'ranks', 'has 2 entries but completions has 3'),
    (_ranking(ranks=[0, 1.0, 2]), 'ranks[1]', 'expected an integer, got number 1.0'),
    (_ranking(ranks=[0, True, 2]), 'ranks[1]', 'expected an integer, got boolean'),
    (_ranking(ranks=[0, 3, 1]), 'ranks[1]', '3 is outside [0, 3)'),
    (_ranking(ranks=[0, -1, 1]), 'ranks[1]', '-1 is outside'),
    (_ranking(ranks=[1, 1, 1]), 'ranks', 'all completions tie'),
    (_ranking(completon='x'), 'completon', 'unknown field for rankings'),
    (_ranking(id=''), 'id', 'is empty'),
    (_ranking(id=[1]), 'id', 'expected a string or integer, got array'),
    (_ranking(meta='x'), 'meta', 'expected an object, got string'),
    (_ranking(prompt='a\ud800b'), 'prompt', 'has an unpaired surrogate at character 2'),
    (['prompt'], 'record', 'expected a JSON object, got array'),
])
def test_bad_rankings_name_the_field(record, field, message):
  with pytest.raises(RecordError) as info:
    records.validate_record(record, 'rankings')
  assert info.value.field == field
  assert message in info.value.message


@pytest.mark.parametrize('kind, record, field', [
    ('text', {'text': ''}, 'text'),
    ('demonstrations', {'prompt': 'p', 'completion': ''}, 'completion'),
    ('prompts', {'prompt': 'p', 'customer': 'c', 'category': ''}, 'category'),
    ('prompts', {'prompt': 'p', 'customer': 5, 'category': 'qa'}, 'customer'),
])
def test_empty_or_wrong_strings_rejected_for_every_kind(kind, record, field):
  with pytest.raises(RecordError, match=field):
    records.validate_record(record, kind)


def test_ties_and_gaps_in_ranks_are_accepted():
  record = _ranking(completions=['a', 'b', 'c', 'd'], ranks=[0, 2, 2, 3])
  assert records.validate_record(record, 'rankings')['ranks'] == [0, 2, 2, 3]


def test_python_callers_may_pass_tuples_and_numpy_ranks(tmp_path):
  record = _ranking(completions=('a', 'b'), ranks=list(np.array([1, 0])))  # np.int64 entries
  path = tmp_path / 'r.jsonl'
  records.write_records(path, 'rankings', [record])
  got = records.read_records(path, 'rankings')[0]
  assert (got['completions'], got['ranks']) == (['a', 'b'], [1, 0])


def test_unknown_kind_is_a_programming_error(tmp_path):
  with pytest.raises(ValueError, match='unknown record kind'):
    records.validate_record({}, 'ranking')
  with pytest.raises(ValueError, match='unknown record kind'):
    records.read_records(tmp_path / 'x.jsonl', 'ranking')


def test_error_prints_file_line_field_message():
  err = RecordError('ranks[1]', 'expected an integer', 'd/r.jsonl', 12)
  assert str(err) == 'd/r.jsonl:12: ranks[1]: expected an integer'
  assert str(RecordError('file', 'no records', 'd/r.jsonl')) == 'd/r.jsonl: file: no records'
  assert str(RecordError('prompt', 'missing')) == 'prompt: missing'
  assert isinstance(err, ValueError)


def test_reader_locates_the_first_bad_line(tmp_path):
  good = json.dumps(GOOD['text'])
  path = _write_lines(tmp_path / 't.jsonl', [good, '', good, '{"text": 1}', '{"text": ""}'])
  stream = records.iter_records(path, 'text')
  assert next(stream) == GOOD['text'] and next(stream) == GOOD['text']  # streams before failing
  with pytest.raises(RecordError) as info:
    next(stream)
  assert (info.value.file, info.value.line, info.value.field) == (path, 4, 'text')
  assert str(info.value).startswith(f'{path}:4: text: expected a string')


@pytest.mark.parametrize('content, field, message', [
    (b'{"text": "a"', 'json', 'invalid JSON'),
    (b'{"text": "a", "text": "b"}', 'text', 'appears twice'),
    (b'{"text": NaN}', 'json', 'NaN is not valid JSON'),
    (b'{"text": "caf\xe9"}', 'utf-8', 'invalid byte 0xe9 at byte 14'),
])
def test_reader_rejects_bad_lines(tmp_path, content, field, message):
  path = tmp_path / 'bad.jsonl'
  path.write_bytes(b'{"text": "ok"}\n' + content + b'\n')
  with pytest.raises(RecordError) as info:
    records.read_records(path, 'text')
  assert (info.value.line, info.value.field) == (2, field)
  assert message in info.value.message


def test_reader_accepts_bom_blank_lines_and_no_final_newline(tmp_path):
  path = tmp_path / 't.jsonl'
  path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\n  \n{"text": "b"}')
  assert [r['text'] for r in records.read_records(path, 'text')] == ['a', 'b']


@pytest.mark.parametrize('content', [b'', b'\n \n'])
def test_empty_file_is_an_error(tmp_path, content):
  path = tmp_path / 'empty.jsonl'
  path.write_bytes(content)
  with pytest.raises(RecordError, match='no records') as info:
    records.read_records(path, 'text')
  assert info.value.line is None and info.value.field == 'file'


def test_missing_file_is_a_record_error(tmp_path):
  with pytest.raises(RecordError, match='No such file') as info:
    records.read_records(tmp_path / 'nope.jsonl', 'text')
  assert info.value.line is None


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
  path = tmp_path / 'r.jsonl'
  records.write_records(path, 'rankings', [GOOD['rankings']])
  before = path.read_bytes()
  with pytest.raises(RecordError) as info:
    records.write_records(path, 'rankings', [GOOD['rankings'], _ranking(ranks=[0, 0, 0])])
  assert (info.value.line, info.value.field) == (2, 'ranks')
  with pytest.raises(RecordError, match='meta: cannot be written as JSON'):
    records.write_records(path, 'rankings', [_ranking(meta={'x': {1, 2}})])
  with pytest.raises(RecordError, match='no records to write'):
    records.write_records(path, 'rankings', [])
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ['r.jsonl']


def test_write_is_plain_utf8_jsonl_with_umask_permissions(tmp_path):
  path = tmp_path / 'p.jsonl'
  records.write_records(path, 'prompts', [{**GOOD['prompts'], 'prompt': 'héllo ✓'}])
  assert path.read_bytes().decode('utf-8').endswith('"héllo ✓", "customer": "c12", '
                                                    '"category": "generation"}\n')
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
