"""Ranking tasks to and from Label Studio and Argilla, so teams using those tools can mix.

Export reads a `rankings` JSONL (tasks with their annotations) or a `samples` JSONL (tasks to
label) and writes one JSON array; import reads such an array (or JSONL) back into `rankings`
records. Completions are named `completion-1` ... `completion-K` in both tools.

Label Studio (Ranker with Buckets, ties = same bucket): a task is
  {"data": {"prompt", "items": [{"id": "completion-1", "title", "body"}, ...]},
   "annotations": [{"completed_by": {"email": LABELER}, "result": [{"type": "ranker",
     "from_name": "rank", "to_name": "items", "value": {"ranker": {"rank-1": [ids], ...}}}]}]}
with the labeling config LABEL_STUDIO_CONFIG (one bucket per position, best first). On import a
ranker value with a single list (a Ranker without buckets) is a strict order, best first.

Argilla (FeedbackDataset records with a RankingQuestion named "ranking", ties = equal rank):
  {"fields": {"prompt", "completion-1", ...}, "responses": [{"user_id": LABELER,
   "status": "submitted", "values": {"ranking": {"value": [{"value": "completion-1",
   "rank": 1}, ...]}}}]}
Only submitted responses are imported.
"""
import json
import pathlib
import re
from typing import Any

from rlhf_jax.data import records

FORMATS = ('label-studio', 'argilla')
QUESTION = 'ranking'
BUCKET_RE = re.compile(r'rank-([0-9]+)')


def label_studio_config(k_max: int = 9) -> str:
  """A Label Studio labeling config for tasks of up to k_max completions."""
  buckets = ''.join(f'<Bucket name="rank-{i}" title="position {i}"/>'
                    for i in range(1, k_max + 1))
  return ('<View><Text name="prompt" value="$prompt"/><List name="items" value="$items" '
          f'title="Completions"/><Ranker name="rank" toName="items">{buckets}</Ranker></View>')


LABEL_STUDIO_CONFIG = label_studio_config()


def _names(k: int) -> list[str]:
  return [f'completion-{i + 1}' for i in range(k)]


def to_label_studio(record: dict) -> dict:
  """One Label Studio task of a samples or rankings record (rankings carry an annotation)."""
  names = _names(len(record['completions']))
  task = {'data': {'prompt': record['prompt'],
                   'items': [{'id': n, 'title': n, 'body': c}
                             for n, c in zip(names, record['completions'])]}}
  if 'ranks' in record:
    buckets = {}
    for n, r in sorted(zip(names, record['ranks']), key=lambda x: x[1]):
      buckets.setdefault(f'rank-{r + 1}', []).append(n)
    task['annotations'] = [{'completed_by': {'email': record['labeler']}, 'result': [
        {'type': 'ranker', 'from_name': 'rank', 'to_name': 'items',
         'value': {'ranker': buckets}}]}]
  return task


def to_argilla(record: dict) -> dict:
  """One Argilla FeedbackDataset record of a samples or rankings record."""
  names = _names(len(record['completions']))
  out = {'fields': {'prompt': record['prompt'], **dict(zip(names, record['completions']))}}
  if 'ranks' in record:
    ranking = [{'value': n, 'rank': r + 1} for n, r in zip(names, record['ranks'])]
    out['responses'] = [{'user_id': record['labeler'], 'status': 'submitted',
                         'values': {QUESTION: {'value': ranking}}}]
  return out


def _ranks_from_positions(positions: dict[str, int], names: list[str]) -> list[int]:
  missing = [n for n in names if n not in positions]
  if missing or len(positions) != len(names):
    raise records.RecordError('ranking', f'must place every completion once; missing {missing}')
  return [positions[n] for n in names]


def from_label_studio(task: Any) -> list[dict]:
  """The rankings records of one Label Studio task (one per annotation)."""
  if not isinstance(task, dict) or not isinstance(task.get('data'), dict):
    raise records.RecordError('data', 'expected a task object with "data"')
  items = task['data'].get('items')
  if not isinstance(items, list):
    raise records.RecordError('data.items', 'expected a list of {"id", "body"}')
  names = [str(i.get('id')) if isinstance(i, dict) else '' for i in items]
  out = []
  for a, annotation in enumerate(task.get('annotations') or []):
    if not isinstance(annotation, dict) or annotation.get('was_cancelled'):
      continue
    who = annotation.get('completed_by')
    labeler = str(who.get('email') or who.get('id')) if isinstance(who, dict) else str(who)
    ranker = [r['value']['ranker'] for r in annotation.get('result') or []
              if isinstance(r, dict) and r.get('type') == 'ranker']
    if len(ranker) != 1 or not isinstance(ranker[0], dict):
      raise records.RecordError(f'annotations[{a}].result', 'expected one ranker result')
    groups = ranker[0]
    if len(groups) == 1:  # a Ranker without buckets: one list, best first
      positions = {n: i for i, n in enumerate(next(iter(groups.values())))}
    else:
      positions = {}
      for bucket, ids in groups.items():
        match = BUCKET_RE.fullmatch(bucket)
        if not match:
          raise records.RecordError(f'annotations[{a}]', f'bucket {bucket!r} is not rank-N')
        positions.update({n: int(match.group(1)) - 1 for n in ids})
    out.append({'prompt': task['data'].get('prompt'),
                'completions': [i.get('body') for i in items],
                'ranks': _ranks_from_positions(positions, names), 'labeler': labeler,
                'meta': {'source': 'label-studio'}})
  return out


def from_argilla(record: Any) -> list[dict]:
  """The rankings records of one Argilla record (one per submitted response)."""
  if not isinstance(record, dict) or not isinstance(record.get('fields'), dict):
    raise records.RecordError('fields', 'expected a record object with "fields"')
  fields = record['fields']
  names = sorted((n for n in fields if re.fullmatch(r'completion-[0-9]+', n)),
                 key=lambda n: int(n.split('-')[1]))
  out = []
  for r, response in enumerate(record.get('responses') or []):
    if not isinstance(response, dict) or response.get('status') != 'submitted':
      continue
    try:
      value = response['values'][QUESTION]['value']
      positions = {v['value']: int(v['rank']) - 1 for v in value}
    except (KeyError, TypeError, ValueError):
      raise records.RecordError(f'responses[{r}].values.{QUESTION}',
                                'expected {"value": [{"value", "rank"}, ...]}') from None
    out.append({'prompt': fields.get('prompt'), 'completions': [fields[n] for n in names],
                'ranks': _ranks_from_positions(positions, names),
                'labeler': str(response.get('user_id')), 'meta': {'source': 'argilla'}})
  return out


def _read(path: str) -> list:
  """A JSON array, or JSONL, of objects."""
  text = pathlib.Path(path).read_text(encoding='utf-8')
  try:
    value = json.loads(text)
  except json.JSONDecodeError:
    return [value for _, value in records.iter_lines(path)]
  return value if isinstance(value, list) else [value]


def import_file(path: str, fmt: str) -> list[dict]:
  """Validated rankings records of a Label Studio or Argilla export; RecordError at PATH:N."""
  convert = {'label-studio': from_label_studio, 'argilla': from_argilla}[fmt]
  out = []
  for number, item in enumerate(_read(path), start=1):
    try:
      out.extend(records.validate_record(r, 'rankings') for r in convert(item))
    except records.RecordError as e:
      raise e.at(path, number) from None
  return out


def export_file(src: str, dest: str, fmt: str) -> int:
  """Writes the Label Studio tasks or Argilla records of a rankings or samples JSONL; count."""
  first = next(records.iter_lines(src))[1]
  kind = 'rankings' if isinstance(first, dict) and 'ranks' in first else 'samples'
  convert = {'label-studio': to_label_studio, 'argilla': to_argilla}[fmt]
  items = [convert(r) for r in records.read_records(src, kind)]
  pathlib.Path(dest).write_text(json.dumps(items, ensure_ascii=False, indent=1) + '\n',
                                encoding='utf-8')
  if fmt == 'label-studio':
    pathlib.Path(dest).with_suffix('.label_config.xml').write_text(LABEL_STUDIO_CONFIG + '\n')
  return len(items)
