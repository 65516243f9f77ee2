"""Importers from HH-RLHF and summarize-from-feedback files the tests write themselves."""
import json

import pytest

from rlhf_jax.data import importers, records
from rlhf_jax.data.records import RecordError

DIALOGUE = '\n\nHuman: Name a colour.\n\nAssistant: Red.\n\nHuman: Another one?\n\nAssistant:'
HH = {'chosen': DIALOGUE + ' Blue.', 'rejected': DIALOGUE + ' I like dogs.'}
TLDR = {
    'info': {'id': 't3_abc', 'post': 'My cat ate my homework.\nWhat now?', 'title': 'Cat help',
             'subreddit': 'relationships'},
    'summaries': [{'text': ' Cat ate homework.', 'policy': 'sup2'},
                  {'text': ' Homework gone, need advice.', 'policy': 'ref'}],
    'choice': 1,
    'worker': 'w42',
    'split': 'train',
}
TLDR_PROMPT = ('SUBREDDIT: r/relationships\nTITLE: Cat help\n'
               'POST: My cat ate my homework.\nWhat now?\nTL;DR:')


def _jsonl(tmp_path, rows, name='src.jsonl'):
  path = tmp_path / name
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
  return path


def test_hh_rlhf_to_rankings_splits_at_the_last_assistant_turn(tmp_path):
  out = importers.import_file(_jsonl(tmp_path, [HH]), 'hh-rlhf')
  assert out.skipped == []
  assert out.records == [{
      'prompt': DIALOGUE, 'completions': [' Blue.', ' I like dogs.'], 'ranks': [0, 1],
      'labeler': 'hh-rlhf', 'meta': {'source': 'hh-rlhf', 'source_line': 1}}]


def test_hh_rlhf_to_demonstrations_keeps_the_chosen_reply(tmp_path):
  out = importers.import_file(_jsonl(tmp_path, [HH]), 'hh-rlhf', 'demonstrations')
  assert [(r['prompt'], r['completion']) for r in out.records] == [(DIALOGUE, ' Blue.')]


def test_hh_rlhf_skips_pairs_without_a_preference(tmp_path):
  same = {'chosen': HH['chosen'], 'rejected': HH['chosen']}
  empty = {'chosen': DIALOGUE, 'rejected': HH['rejected']}
  path = _jsonl(tmp_path, [HH, same, empty])
  rankings = importers.import_file(path, 'hh-rlhf', 'rankings')
  assert len(rankings.records) == 2  # an empty reply is still rankable
  assert rankings.skipped == [f'{path}:2: chosen and rejected replies are identical']
  demos = importers.import_file(path, 'hh-rlhf', 'demonstrations')
  assert len(demos.records) == 2
  assert demos.skipped == [f'{path}:3: chosen reply is empty']


@pytest.mark.parametrize('row, field, message', [
    ('{"chosen": "x"', 'json', 'invalid JSON'),
    ({'chosen': HH['chosen']}, 'rejected', 'missing'),
    ({**HH, 'chosen': 7}, 'chosen', 'expected a string, got integer 7'),
    ({**HH, 'chosen': '\n\nHuman: hi'}, 'chosen', "has no '\\n\\nAssistant:' turn"),
    ({**HH, 'rejected': HH['rejected'] + '\n\nHuman: more?'}, 'rejected', 'ends with a Human'),
    ({**HH, 'rejected': HH['rejected'].replace('colour', 'color')}, 'rejected',
     'differs from chosen before the last Assistant turn (at character 21)'),
    (['chosen'], 'record', 'expected a JSON object'),
])
def test_hh_rlhf_malformed_rows_name_file_and_line(tmp_path, row, field, message):
  path = _jsonl(tmp_path, [HH, row])
  with pytest.raises(RecordError) as info:
    importers.import_file(path, 'hh-rlhf')
  assert (info.value.file, info.value.line, info.value.field) == (path, 2, field)
  assert message in info.value.message
  assert str(info.value).startswith(f'{path}:2: {field}: ')


def test_tldr_to_rankings_uses_the_tldr_prompt_and_choice(tmp_path):
  out = importers.import_file(_jsonl(tmp_path, [TLDR, {**TLDR, 'choice': 0}]), 'tldr')
  first, second = out.records
  assert first == {
      'prompt': TLDR_PROMPT,
      'completions': [' Cat ate homework.', ' Homework gone, need advice.'],
      'ranks': [1, 0], 'labeler': 'w42',
      'meta': {'source': 'tldr', 'source_line': 1, 'post_id': 't3_abc'}}
  assert second['ranks'] == [0, 1]


def test_tldr_to_demonstrations_keeps_the_chosen_summary(tmp_path):
  out = importers.import_file(_jsonl(tmp_path, [TLDR]), 'tldr', 'demonstrations')
  assert [(r['prompt'], r['completion']) for r in out.records] == [
      (TLDR_PROMPT, ' Homework gone, need advice.')]


def _tldr(**changes):
  return {**TLDR, **changes}


@pytest.mark.parametrize('row, field, message', [
    (_tldr(info={**TLDR['info'], 'post': None}), 'info.post', 'missing'),
    (_tldr(info='post'), 'info', 'expected an object, got string'),
    (_tldr(summaries=[{'text': 'only'}]), 'summaries', 'has 1 entries'),
    (_tldr(summaries=[{'text': 'a'}, {'txt': 'b'}]), 'summaries[1].text', 'missing'),
    (_tldr(summaries=[{'text': 'a'}, 'b']), 'summaries[1]', 'expected a JSON object'),
    (_tldr(choice=2), 'choice', '2 is outside [0, 2)'),
    (_tldr(choice=True), 'choice', 'expected an integer, got boolean'),
    (_tldr(choice='1'), 'choice', 'expected an integer, got string'),
    ({k: v for k, v in TLDR.items() if k != 'worker'}, 'worker', 'missing'),
    (_tldr(worker=''), 'labeler', 'is empty'),
])
def test_tldr_malformed_rows_name_file_and_line(tmp_path, row, field, message):
  path = _jsonl(tmp_path, [TLDR, row])
  with pytest.raises(RecordError) as info:
    importers.import_file(path, 'tldr')
  assert (info.value.line, info.value.field) == (2, field)
  assert message in info.value.message


def test_wrong_source_format_fails_on_its_first_line(tmp_path):
  with pytest.raises(RecordError, match=r':1: info: missing'):
    importers.import_file(_jsonl(tmp_path, [HH]), 'tldr')
  with pytest.raises(RecordError, match=r':1: chosen: missing'):
    importers.import_file(_jsonl(tmp_path, [TLDR]), 'hh-rlhf')


def test_imported_records_round_trip_through_the_records_files(tmp_path):
  for source, row in (('hh-rlhf', HH), ('tldr', TLDR)):
    for kind in importers.TARGET_KINDS:
      out = importers.import_file(_jsonl(tmp_path, [row, row]), source, kind)
      path = tmp_path / f'{source}.{kind}.jsonl'
      assert records.write_records(path, kind, out.records) == 2
      assert records.read_records(path, kind) == out.records


def test_unknown_source_or_kind_is_a_programming_error(tmp_path):
  with pytest.raises(ValueError, match='cannot import'):
    importers.import_file(tmp_path / 'x.jsonl', 'webgpt')
  with pytest.raises(ValueError, match='cannot import'):
    importers.import_file(tmp_path / 'x.jsonl', 'tldr', 'prompts')


def test_missing_and_empty_sources_are_record_errors(tmp_path):
  with pytest.raises(RecordError, match='No such file'):
    importers.import_file(tmp_path / 'x.jsonl', 'hh-rlhf')
  (tmp_path / 'empty.jsonl').write_text('')
  with pytest.raises(RecordError, match='no records'):
    importers.import_file(tmp_path / 'empty.jsonl', 'tldr')
