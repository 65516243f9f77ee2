"""The four JSONL record kinds of DESIGN.md: strict readers, validation and atomic writers.

Every file is UTF-8 JSONL, one JSON object per line:

  text            {"text": str}
  demonstrations  {"prompt": str, "completion": str}
  rankings        {"prompt": str, "completions": [K str], "ranks": [K int], "labeler": str}
  prompts         {"prompt": str, "customer": str, "category": str}
  samples         {"prompt": str, "completions": [K str]}   (unranked: the labelers' input)

Rules (a record breaking one is an error, never skipped):
  - `text`, `prompt`, `completion`, `labeler`, `customer`, `category` are non-empty strings, and
    not whitespace only: an empty prompt or demonstration teaches nothing.
  - Ranking and sample `completions` may be empty strings: a policy can sample an empty
    response, and ranking it last is real signal.
  - K = len(completions) >= 2, no upper bound (the paper uses 4..9, HH-RLHF has 2).
  - `ranks` has K integers in [0, K), 0 = best, equal = tie, with at least two distinct values:
    an all-tie ranking yields no comparison. Gaps are fine ([0, 2, 2] == [0, 1, 1]).
  - Besides its own fields a record may carry only `id` (str or int) and `meta` (any object,
    kept as is). Any other key is an error, so a typo such as "completon" cannot silently drop
    data; put extra information under `meta`.
  - Duplicate keys, NaN/Infinity, numbers beyond the float range (1e400), integers too long for
    Python to convert, nesting too deep to decode, lone surrogates and non-UTF-8 bytes are
    errors. Blank lines are ignored (they hold no record); a file with no records is an error.

Errors are `RecordError`s that print as `FILE:LINE: field: what is wrong`.
"""
import json
import math
import numbers
import os
import sys
from typing import Any, Iterable, Iterator

from rlhf_jax import atomic

KINDS = ('text', 'demonstrations', 'rankings', 'prompts', 'samples')
OPTIONAL_FIELDS = ('id', 'meta')

# The required fields of each kind, in the order records are written.
FIELDS = {
    'text': ('text',),
    'demonstrations': ('prompt', 'completion'),
    'rankings': ('prompt', 'completions', 'ranks', 'labeler'),
    'prompts': ('prompt', 'customer', 'category'),
    'samples': ('prompt', 'completions'),
}
_TEXT_FIELDS = ('text', 'prompt', 'completion', 'labeler', 'customer', 'category')


class RecordError(ValueError):
  """A bad record or file; prints as `FILE:LINE: field: message` (no LINE for whole-file errors).

  Attributes:
    file: the path as given, or None while the record is not yet tied to a file.
    line: 1-based line number, or None for whole-file problems (missing, empty).
    field: the field at fault, e.g. `ranks[2]`; `json`, `utf-8` or `file` for line/file problems.
    message: what is wrong.
  """

  def __init__(self, field: str, message: str, file: Any = None, line: int | None = None):
    self.field, self.message, self.file, self.line = field, message, file, line
    super().__init__(field, message)

  def at(self, file: Any, line: int | None) -> 'RecordError':
    """Returns this error located at FILE:LINE."""
    return RecordError(self.field, self.message, file, line)

  def __str__(self) -> str:
    where = [str(self.file)] if self.file is not None else []
    where += [str(self.line)] if self.line is not None else []
    return ': '.join(([':'.join(where)] if where else []) + [self.field, self.message])


def json_type(value: Any) -> str:
  """The JSON name of a decoded value's type (with the value for numbers), for error messages."""
  for python_type, name in ((bool, 'boolean'), (int, 'integer'), (float, 'number'),
                            (str, 'string'), (list, 'array'), (dict, 'object')):
    if isinstance(value, python_type):
      return f'{name} {json.dumps(value)[:40]}' if name in ('integer', 'number') else name
  return 'null' if value is None else type(value).__name__


def _check_string(value: Any, field: str, allow_empty: bool = False) -> str:
  if not isinstance(value, str):
    raise RecordError(field, f'expected a string, got {json_type(value)}')
  if not allow_empty and not value.strip():
    raise RecordError(field, 'is empty' if not value else 'is only whitespace')
  try:
    value.encode('utf-8')
  except UnicodeEncodeError as e:
    # json.loads accepts "\ud800" escapes; they cannot be written back or tokenized.
    raise RecordError(field, f'has an unpaired surrogate at character {e.start + 1}') from None
  return value


def _check_list(value: Any, field: str) -> list:
  # Tuples only come from Python callers of write_records; they are written as JSON arrays.
  if not isinstance(value, (list, tuple)):
    raise RecordError(field, f'expected an array, got {json_type(value)}')
  return list(value)


def _check_ranks(ranks: Any, k: int) -> list[int]:
  ranks = _check_list(ranks, 'ranks')
  if len(ranks) != k:
    raise RecordError('ranks', f'has {len(ranks)} entries but completions has {k}')
  for i, rank in enumerate(ranks):
    # Integral admits numpy integers from Python callers (simulated labelers); bool is excluded
    # because JSON true/false is not a rank.
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
      raise RecordError(f'ranks[{i}]', f'expected an integer, got {json_type(rank)}')
    if not 0 <= rank < k:
      raise RecordError(f'ranks[{i}]', f'{rank} is outside [0, {k}) for K={k} completions')
  ranks = [int(rank) for rank in ranks]
  if len(set(ranks)) < 2:
    raise RecordError('ranks', 'all completions tie, so the record holds no comparison')
  return ranks


def _check_completions(completions: Any) -> list[str]:
  completions = _check_list(completions, 'completions')
  if len(completions) < 2:
    raise RecordError('completions', f'has {len(completions)} entries, a ranking needs >= 2')
  return [_check_string(c, f'completions[{i}]', allow_empty=True)
          for i, c in enumerate(completions)]


def _check_id(value: Any) -> str | int:
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise RecordError('id', f'expected a string or integer, got {json_type(value)}')
  return _check_string(value, 'id') if isinstance(value, str) else value


def validate_record(record: dict, kind: str) -> dict:
  """Checks one record of `kind` against the rules in the module docstring.

  Args:
    record: a decoded JSON object.
    kind: one of KINDS.

  Returns:
    A new dict with the fields in canonical order (required fields, then `id`, `meta`), lists
    as fresh Python lists and ranks as Python ints (numpy integers are accepted).

  Raises:
    RecordError: naming the first bad field (file and line are left to the caller).
  """
  if kind not in FIELDS:
    raise ValueError(f'unknown record kind {kind!r}, expected one of {KINDS}')
  if not isinstance(record, dict):
    raise RecordError('record', f'expected a JSON object, got {json_type(record)}')
  fields = FIELDS[kind]
  for key in record:
    if key not in fields and key not in OPTIONAL_FIELDS:
      raise RecordError(key, f'unknown field for {kind} (allowed: '
                        f'{", ".join(fields + OPTIONAL_FIELDS)}); put extra data under "meta"')
  for key in fields:
    if key not in record:
      raise RecordError(key, 'missing')
  out = {key: _check_string(record[key], key) for key in fields if key in _TEXT_FIELDS}
  if kind in ('rankings', 'samples'):
    out['completions'] = _check_completions(record['completions'])
  if kind == 'rankings':
    out['ranks'] = _check_ranks(record['ranks'], len(out['completions']))
  out = {key: out[key] for key in fields}
  if 'id' in record:
    out['id'] = _check_id(record['id'])
  if 'meta' in record:
    if not isinstance(record['meta'], dict):
      raise RecordError('meta', f'expected an object, got {json_type(record["meta"])}')
    out['meta'] = record['meta']
  return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
  """json object hook: json.loads would otherwise keep the last of two equal keys silently."""
  out = {}
  for key, value in pairs:
    if key in out:
      raise RecordError(key, 'appears twice in the object')
    out[key] = value
  return out


def _reject_constant(name: str):
  raise RecordError('json', f'{name} is not valid JSON')


def _finite_float(text: str) -> float:
  """json float hook: `1e400` would otherwise decode to inf, which cannot be written back."""
  value = float(text)
  if not math.isfinite(value):
    raise RecordError('json', f'number {text[:40]} is out of the float range')
  return value


def _bounded_int(text: str) -> int:
  """json int hook: Python refuses integers longer than sys.get_int_max_str_digits() with advice
  about Python, not about the data."""
  try:
    return int(text)
  except ValueError:
    raise RecordError('json', f'integer with {len(text.lstrip("-"))} digits is too large (at '
                      f'most {sys.get_int_max_str_digits()})') from None


def _parse_line(raw: bytes, first: bool = False) -> Any:
  """Decodes one JSONL line (bytes, trailing newline allowed); raises a file-less RecordError."""
  try:
    # A UTF-8 byte-order mark is legal at the start of a file (Windows editors write one).
    text = raw.decode('utf-8-sig' if first else 'utf-8')
  except UnicodeDecodeError as e:
    raise RecordError('utf-8', f'invalid byte 0x{raw[e.start]:02x} at byte {e.start + 1} '
                      '(the file must be UTF-8)') from None
  try:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                      parse_constant=_reject_constant, parse_float=_finite_float,
                      parse_int=_bounded_int)
  except json.JSONDecodeError as e:
    raise RecordError('json', f'invalid JSON: {e.msg} at column {e.colno}') from None
  except RecursionError:
    raise RecordError('json', 'arrays or objects are nested too deeply') from None


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
  """Yields (line number, decoded JSON value) for the non-blank lines of a JSONL file.

  Raises:
    RecordError: located at FILE:LINE for a bad line, at FILE for a missing or empty file.
  """
  try:
    f = open(path, 'rb')
  except OSError as e:
    raise RecordError('file', e.strerror or str(e), path) from None
  n_values = 0
  with f:
    for number, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      try:
        value = _parse_line(raw, first=number == 1)
      except RecordError as e:
        raise e.at(path, number) from None
      n_values += 1
      yield number, value
  if not n_values:
    raise RecordError('file', 'no records (the file is empty or blank)', path)


def iter_records(path: str | os.PathLike, kind: str) -> Iterator[dict]:
  """Streams the validated records of a JSONL file of `kind`; the first bad one raises.

  Raises:
    RecordError: at FILE:LINE for a bad record, at FILE for a missing or empty file.
  """
  if kind not in FIELDS:
    raise ValueError(f'unknown record kind {kind!r}, expected one of {KINDS}')
  for number, value in iter_lines(path):
    try:
      yield validate_record(value, kind)
    except RecordError as e:
      raise e.at(path, number) from None


def read_records(path: str | os.PathLike, kind: str) -> list[dict]:
  """All validated records of a JSONL file of `kind`; see iter_records."""
  return list(iter_records(path, kind))


def write_records(path: str | os.PathLike, kind: str, records: Iterable[dict]) -> int:
  """Validates every record, then writes them as JSONL atomically.

  The file appears complete or not at all: records go to a temporary file in the same
  directory that replaces `path` only after all were written and synced.

  Args:
    path: destination; missing parent directories are created.
    kind: one of KINDS.
    records: the records; validated before anything is written.

  Returns:
    The number of records written.

  Raises:
    RecordError: at PATH:N for the N-th record (the line it would have had), or at PATH when
      there are no records (readers reject empty files) or the file cannot be written.
  """
  lines = []
  for number, record in enumerate(records, start=1):
    try:
      lines.append(_dump(validate_record(record, kind)))
    except RecordError as e:
      raise e.at(path, number) from None
  if not lines:
    raise RecordError('file', 'no records to write (readers reject empty files)', path)
  if os.path.isdir(path):
    raise RecordError('file', 'is a directory, expected a file path', path)
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic.write_lines(path, lines)
  except OSError as e:
    # Read-only folder, disk full, a parent that is a file: nothing is written.
    where = f': {e.filename}' if e.filename else ''
    raise RecordError('file', f'cannot write: {e.strerror or e}{where}', path) from None
  return len(lines)


def _dump(record: dict) -> str:
  """One JSONL line; `meta` built in Python may hold values JSON cannot represent."""
  try:
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + '\n'
  except (TypeError, ValueError) as e:
    raise RecordError('meta', f'cannot be written as JSON: {e}') from None
  except RecursionError:
    raise RecordError('meta', 'cannot be written as JSON: nested too deeply') from None
