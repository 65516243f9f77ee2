"""What a labeling session shows and the rules a submission must meet: pure functions, no I/O.

A task is one prompt with its K completions (a `samples` record). A labeler judges it in the
paper's two steps (App. B, Figs. 12-13): per completion a 1-7 Likert rating and the Table 3
metadata flags, then a ranking of all K where equal ranks are ties.

Flags per completion: `fails_instruction` and `inappropriate` are true or false;
`hallucination` (closed-domain tasks only) and `satisfies_constraint` (prompts that set a
constraint only) are true, false or null for "not applicable".

Assignment: labelers get disjoint tasks, except a share `overlap` of them (chosen by a hash of
the task id and the seed, so a restart chooses the same ones) that two labelers each label, for
agreement. A task a labeler opens is claimed for CLAIM_SECONDS so two labelers working at once
do not get the same one.
"""
import dataclasses
import hashlib
import itertools
import json
import re
from typing import Any, Iterable, Mapping

LIKERT = (1, 7)
BOOL_FLAGS = ('fails_instruction', 'inappropriate')
OPTIONAL_FLAGS = ('hallucination', 'satisfies_constraint')  # null = not applicable
FLAGS = BOOL_FLAGS + OPTIONAL_FLAGS
SUBMISSION_FIELDS = ('task', 'labeler', 'likert', 'flags', 'ranks')
CLAIM_SECONDS = 30 * 60
OVERLAP_LABELERS = 2
# Names go into records and URLs: printable, no path separators, bounded.
LABELER_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}')
TASK_ID_RE = re.compile(r'[0-9a-f]{12}(-[0-9]{1,6})?')


class SubmissionError(ValueError):
  """A request the server refuses: `field: message`, answered with HTTP `status` (400 for a
  malformed request, 409 for one that conflicts with the session's state)."""

  def __init__(self, field: str, message: str, status: int = 400):
    self.field, self.message, self.status = field, message, status
    super().__init__(f'{field}: {message}')


@dataclasses.dataclass(frozen=True)
class Task:
  """One prompt and its K completions.

  Attributes:
    id: stable id, a hash of the prompt and completions (suffixed for exact duplicates).
    prompt: the prompt.
    completions: the K completions, in file order.
    meta: the sample's meta (policies, customer, category), kept in the output records.
  """
  id: str
  prompt: str
  completions: tuple[str, ...]
  meta: Mapping[str, Any]

  def public(self) -> dict:
    """What the page shows."""
    return {'id': self.id, 'prompt': self.prompt, 'completions': list(self.completions),
            'category': self.meta.get('category')}


def make_tasks(samples: Iterable[Mapping]) -> list[Task]:
  """Tasks of validated `samples` records, in order, with ids unique within the list."""
  out, seen = [], {}
  for s in samples:
    digest = hashlib.sha256(json.dumps([s['prompt'], s['completions']]).encode()).hexdigest()[:12]
    seen[digest] = seen.get(digest, 0) + 1
    task_id = digest if seen[digest] == 1 else f'{digest}-{seen[digest]}'
    out.append(Task(task_id, s['prompt'], tuple(s['completions']), dict(s.get('meta', {}))))
  return out


def check_labeler(name: Any) -> str:
  """A labeler name as given, or SubmissionError."""
  if not isinstance(name, str) or not LABELER_RE.fullmatch(name):
    raise SubmissionError('labeler', 'expected 1-64 characters: letters, digits, space, _ . @ -, '
                          'starting with a letter or digit')
  return name


def check_task_id(task_id: Any, known: Mapping[str, Task]) -> str:
  """A known task id, or SubmissionError."""
  if not isinstance(task_id, str) or not TASK_ID_RE.fullmatch(task_id):
    raise SubmissionError('task', 'not a task id')
  if task_id not in known:
    raise SubmissionError('task', f'unknown task {task_id}')
  return task_id


def _int_list(value: Any, field: str, k: int, low: int, high: int) -> list[int]:
  if not isinstance(value, list) or len(value) != k:
    raise SubmissionError(field, f'expected a list of {k} integers')
  for i, v in enumerate(value):
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
      raise SubmissionError(f'{field}[{i}]', f'expected an integer in [{low}, {high}]')
  return list(value)


def dense_ranks(ranks: list[int]) -> list[int]:
  """Ranks renumbered 0, 1, 2, ... in order, ties kept: [0, 2, 2, 5] -> [0, 1, 1, 2]."""
  levels = {r: i for i, r in enumerate(sorted(set(ranks)))}
  return [levels[r] for r in ranks]


def _flags(value: Any, k: int) -> list[dict]:
  if not isinstance(value, list) or len(value) != k:
    raise SubmissionError('flags', f'expected a list of {k} objects')
  out = []
  for i, f in enumerate(value):
    if not isinstance(f, dict) or set(f) != set(FLAGS):
      raise SubmissionError(f'flags[{i}]', f'expected an object with exactly {", ".join(FLAGS)}')
    for name in FLAGS:
      allowed = (True, False) if name in BOOL_FLAGS else (True, False, None)
      if not any(f[name] is a for a in allowed):
        raise SubmissionError(f'flags[{i}].{name}', 'expected true or false' +
                              (' or null (not applicable)' if name in OPTIONAL_FLAGS else ''))
    out.append({name: f[name] for name in FLAGS})
  return out


def check_submission(body: Any, known: Mapping[str, Task]) -> dict:
  """Validates a labeling submission; returns it with dense ranks.

  Args:
    body: the decoded JSON body: {"task", "labeler", "likert": [K], "flags": [K], "ranks": [K]},
      ranks 0 = best, equal = tie, at least two distinct values (an all-tie ranking holds no
      comparison: the page offers skip instead).
    known: task id -> Task.

  Raises:
    SubmissionError: naming the first bad field.
  """
  if not isinstance(body, dict):
    raise SubmissionError('body', 'expected a JSON object')
  extra = sorted(set(body) - set(SUBMISSION_FIELDS))
  if extra:
    raise SubmissionError(extra[0], 'unknown field')
  for name in SUBMISSION_FIELDS:
    if name not in body:
      raise SubmissionError(name, 'missing')
  task = known[check_task_id(body['task'], known)]
  k = len(task.completions)
  ranks = _int_list(body['ranks'], 'ranks', k, 0, k - 1)
  if len(set(ranks)) < 2:
    raise SubmissionError('ranks', 'all completions tie, so the ranking holds no comparison')
  return {'task': task.id, 'labeler': check_labeler(body['labeler']),
          'likert': _int_list(body['likert'], 'likert', k, *LIKERT),
          'flags': _flags(body['flags'], k), 'ranks': dense_ranks(ranks)}


def needed(task_id: str, overlap: float, seed: int) -> int:
  """How many labelers label the task: OVERLAP_LABELERS for a share `overlap`, else 1."""
  h = int(hashlib.sha256(f'{seed}/{task_id}'.encode()).hexdigest()[:8], 16) / 2**32
  return OVERLAP_LABELERS if h < overlap else 1


@dataclasses.dataclass
class State:
  """What the event log says so far.

  Attributes:
    labels: task id -> {labeler: the live submission (with its `seq`)}.
    history: labeler -> seqs of their live submissions, oldest first (undo pops the last).
    skipped: labeler -> task ids skipped and not labelled since, in skip order.
  """
  labels: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)
  history: dict[str, list[int]] = dataclasses.field(default_factory=dict)
  skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def apply(state: State, event: Mapping) -> None:
  """Folds one event of the log into `state` (events are replayed in order on start)."""
  kind, labeler = event['type'], event['labeler']
  skipped = state.skipped.setdefault(labeler, [])
  if kind == 'label':
    state.labels.setdefault(event['task'], {})[labeler] = dict(event)
    state.history.setdefault(labeler, []).append(event['seq'])
    if event['task'] in skipped:
      skipped.remove(event['task'])
  elif kind == 'skip':
    if event['task'] not in skipped:
      skipped.append(event['task'])
  elif kind == 'undo':
    state.history[labeler].remove(event['target'])
    for by in state.labels.values():
      if by.get(labeler, {}).get('seq') == event['target']:
        del by[labeler]
  else:
    raise ValueError(f'unknown event type {kind!r}')


def last_label(state: State, labeler: str) -> dict | None:
  """The labeler's most recent live submission, or None."""
  if not state.history.get(labeler):
    return None
  seq = state.history[labeler][-1]
  return next(by[labeler] for by in state.labels.values() if by.get(labeler, {}).get('seq') == seq)


def live_claims(claims: Mapping[str, tuple[str, float]], now: float) -> dict[str, str]:
  """labeler -> task of the claims younger than CLAIM_SECONDS."""
  return {who: task for who, (task, since) in claims.items() if now - since < CLAIM_SECONDS}


def next_task(tasks: list[Task], state: State, labeler: str, claims: Mapping[str, str],
              overlap: float, seed: int) -> str | None:
  """The task to show `labeler` next, or None when they have nothing left.

  Their own live claim first (a reload or a restart-and-reload resumes it), then the first task
  in file order they have not labelled or skipped that still needs a labeler counting other
  labelers' claims, then their skipped tasks in skip order (skip and come back).
  """
  if labeler in claims:
    return claims[labeler]
  others = [task for who, task in claims.items() if who != labeler]
  skipped = state.skipped.get(labeler, [])

  def open_for(task_id: str) -> bool:
    by = state.labels.get(task_id, {})
    return labeler not in by and len(by) + others.count(task_id) < needed(task_id, overlap, seed)

  fresh = (t.id for t in tasks if t.id not in skipped and open_for(t.id))
  return next(itertools.chain(fresh, (t for t in skipped if open_for(t))), None)


def pair_agreement(labels: Mapping[str, Mapping[str, dict]]) -> dict:
  """Inter-labeler agreement on tasks labelled more than once, as the paper measured it (3.4):
  for every two labelers of a task and every two completions neither of them ties, whether they
  prefer the same one.

  Returns:
    {'tasks': tasks labelled twice or more, 'pairs': comparisons counted, 'agreement': share of
    them that agree, or None when there are none}.
  """
  agree = pairs = tasks = 0
  for by in labels.values():
    if len(by) < 2:
      continue
    tasks += 1
    for a, b in itertools.combinations(sorted(by), 2):
      ra, rb = by[a]['ranks'], by[b]['ranks']
      for i, j in itertools.combinations(range(len(ra)), 2):
        if ra[i] != ra[j] and rb[i] != rb[j]:
          pairs += 1
          agree += (ra[i] < ra[j]) == (rb[i] < rb[j])
  return {'tasks': tasks, 'pairs': pairs, 'agreement': agree / pairs if pairs else None}


def progress(tasks: list[Task], state: State, overlap: float, seed: int) -> dict:
  """Done / total label slots, per labeler counts and skips, and agreement on the overlap."""
  total = sum(needed(t.id, overlap, seed) for t in tasks)
  done = sum(min(len(state.labels.get(t.id, {})), needed(t.id, overlap, seed)) for t in tasks)
  per = {who: len(seqs) for who, seqs in sorted(state.history.items()) if seqs}
  return {'done': done, 'total': total, 'tasks': len(tasks), 'labelers': per,
          'skipped': {who: list(s) for who, s in sorted(state.skipped.items()) if s},
          'agreement': pair_agreement(state.labels)}


def output_records(tasks: list[Task], state: State) -> tuple[list[dict], list[dict]]:
  """(rankings records, metadata records) of the live submissions, in task then label order.

  A rankings record carries the sample's meta plus the task id; the metadata record (same
  `id`, `labeler`) holds the Likert ratings and flags of each completion.
  """
  rankings, metadata = [], []
  for t in tasks:
    for sub in sorted(state.labels.get(t.id, {}).values(), key=lambda s: s['seq']):
      rankings.append({'prompt': t.prompt, 'completions': list(t.completions),
                       'ranks': sub['ranks'], 'labeler': sub['labeler'], 'id': t.id,
                       'meta': {**t.meta, 'source': 'rlhf_jax.label_ui'}})
      metadata.append({'id': t.id, 'labeler': sub['labeler'], 'likert': sub['likert'],
                       'flags': sub['flags'], 'time': sub['time']})
  return rankings, metadata
