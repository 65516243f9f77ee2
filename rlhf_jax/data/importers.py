"""Importers from public preference datasets into this project's record kinds (see records.py).

Sources (JSONL, one source record per line):

  hh-rlhf  Anthropic HH-RLHF: {"chosen": dialogue, "rejected": dialogue}, each dialogue
           "\\n\\nHuman: ...\\n\\nAssistant: ...", the two equal up to their last Assistant turn.
           prompt = the shared dialogue up to and including the last "\\n\\nAssistant:";
           completions = [chosen reply, rejected reply], ranks [0, 1], labeler "hh-rlhf".
  tldr     OpenAI summarize-from-feedback comparisons: {"info": {"post", "title", "subreddit"},
           "summaries": [{"text"}, ...], "choice": i, "worker": str}.
           prompt = "SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:";
           completions = the summaries in their order, rank 0 for the chosen one and 1 for
           the others; labeler = worker.

Both convert to `rankings`, or to `demonstrations` with the preferred reply as completion.
Text is kept verbatim (replies keep their leading space). Each record gets
`meta = {"source", "source_line"}`, plus `post_id` for tldr, so it can be traced back.

A malformed source record raises RecordError at FILE:LINE. A well-formed one that holds
nothing usable is skipped and reported in `Imported.skipped`: an HH pair whose two replies are
identical (no preference) for rankings, an empty chosen reply for demonstrations.
"""
import os
from typing import Any, Callable, NamedTuple

from rlhf_jax.data.records import RecordError, iter_lines, json_type, validate_record

SOURCES = ('hh-rlhf', 'tldr')
TARGET_KINDS = ('rankings', 'demonstrations')
HH_ASSISTANT = '\n\nAssistant:'
HH_HUMAN = '\n\nHuman:'
HH_LABELER = 'hh-rlhf'
_JSON_NAMES = {str: 'a string', int: 'an integer', list: 'an array', dict: 'an object'}


class Imported(NamedTuple):
  """The converted records, and `FILE:LINE: why` for each source record skipped."""
  records: list[dict]
  skipped: list[str]


class _Skip(Exception):
  """A well-formed source record that holds nothing usable for the target kind."""


def _get(obj: Any, key: str, field: str, expected: type) -> Any:
  """obj[key] checked to be of type `expected`; `field` names it in errors (e.g. info.post)."""
  if not isinstance(obj, dict):
    raise RecordError(field.rpartition('.')[0] or 'record', 'expected a JSON object')
  if obj.get(key) is None:
    raise RecordError(field, 'missing')
  if not isinstance(obj[key], expected) or isinstance(obj[key], bool):
    raise RecordError(field, f'expected {_JSON_NAMES[expected]}, got {json_type(obj[key])}')
  return obj[key]


def split_hh_dialogue(dialogue: str, field: str) -> tuple[str, str]:
  """Splits an HH dialogue into (everything up to the last Assistant turn, its reply)."""
  cut = dialogue.rfind(HH_ASSISTANT)
  if cut < 0:
    raise RecordError(field, f'has no {HH_ASSISTANT!r} turn')
  cut += len(HH_ASSISTANT)
  if HH_HUMAN in dialogue[cut:]:
    raise RecordError(field, 'ends with a Human turn after the last Assistant turn')
  return dialogue[:cut], dialogue[cut:]


def _hh_record(obj: Any, kind: str) -> dict:
  """One HH-RLHF pair as an unvalidated record of `kind`; raises RecordError or _Skip."""
  prompt, chosen = split_hh_dialogue(_get(obj, 'chosen', 'chosen', str), 'chosen')
  rejected_prompt, rejected = split_hh_dialogue(_get(obj, 'rejected', 'rejected', str),
                                                'rejected')
  if rejected_prompt != prompt:
    at = next((i for i, (a, b) in enumerate(zip(prompt, rejected_prompt)) if a != b),
              min(len(prompt), len(rejected_prompt)))
    raise RecordError('rejected', f'dialogue differs from chosen before the last Assistant '
                      f'turn (at character {at + 1})')
  if kind == 'demonstrations':
    if not chosen.strip():
      raise _Skip('chosen reply is empty')
    return {'prompt': prompt, 'completion': chosen}
  if chosen == rejected:
    raise _Skip('chosen and rejected replies are identical')
  return {'prompt': prompt, 'completions': [chosen, rejected], 'ranks': [0, 1],
          'labeler': HH_LABELER}


def tldr_prompt(info: Any) -> str:
  """The TL;DR prompt of a summarize-from-feedback `info` object (Reddit posts only)."""
  parts = {key: _get(info, key, f'info.{key}', str) for key in ('subreddit', 'title', 'post')}
  return (f'SUBREDDIT: r/{parts["subreddit"]}\nTITLE: {parts["title"]}\n'
          f'POST: {parts["post"]}\nTL;DR:')


def _tldr_record(obj: Any, kind: str) -> dict:
  """One summarize-from-feedback comparison as an unvalidated record of `kind`."""
  prompt = tldr_prompt(_get(obj, 'info', 'info', dict))
  summaries = _get(obj, 'summaries', 'summaries', list)
  if len(summaries) < 2:
    raise RecordError('summaries', f'has {len(summaries)} entries, a comparison needs >= 2')
  texts = [_get(s, 'text', f'summaries[{i}].text', str) for i, s in enumerate(summaries)]
  choice = _get(obj, 'choice', 'choice', int)
  if not 0 <= choice < len(texts):
    raise RecordError('choice', f'{choice} is outside [0, {len(texts)})')
  if kind == 'demonstrations':
    return {'prompt': prompt, 'completion': texts[choice]}
  return {'prompt': prompt, 'completions': texts,
          'ranks': [0 if i == choice else 1 for i in range(len(texts))],
          'labeler': _get(obj, 'worker', 'worker', str)}


def _provenance(obj: dict, source: str, number: int) -> dict:
  """The `meta` of an imported record: where it came from."""
  meta = {'source': source, 'source_line': number}
  post_id = obj.get('info', {}).get('id') if source == 'tldr' else None
  if isinstance(post_id, str):
    meta['post_id'] = post_id
  return meta


_CONVERTERS: dict[str, Callable[[Any, str], dict]] = {'hh-rlhf': _hh_record,
                                                      'tldr': _tldr_record}


def import_file(path: str | os.PathLike, source: str, kind: str = 'rankings') -> Imported:
  """Converts a source JSONL file into validated records of `kind`.

  Args:
    path: the source file.
    source: one of SOURCES.
    kind: one of TARGET_KINDS.

  Returns:
    Imported(records, skipped).

  Raises:
    RecordError: at FILE:LINE for a malformed source record (field names the source field,
      e.g. `info.post`), at FILE for a missing or empty file or one whose every record is
      skipped.
  """
  if source not in _CONVERTERS or kind not in TARGET_KINDS:
    raise ValueError(f'cannot import {source!r} as {kind!r}: sources {SOURCES}, '
                     f'kinds {TARGET_KINDS}')
  records, skipped = [], []
  for number, obj in iter_lines(path):
    try:
      record = _CONVERTERS[source](obj, kind)
      record['meta'] = _provenance(obj, source, number)
      records.append(validate_record(record, kind))
    except _Skip as skip:
      skipped.append(f'{path}:{number}: {skip}')
    except RecordError as e:
      raise e.at(path, number) from None
  if not records:
    raise RecordError('file', f'no usable records: all {len(skipped)} were skipped, first: '
                      f'{skipped[0]}', path)
  return Imported(records, skipped)
