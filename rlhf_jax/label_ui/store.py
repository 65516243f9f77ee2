"""A labeling session on disk: an append-only event log and the output files derived from it.

<out>/events.jsonl is the one source of truth: every submission, skip and undo is one JSON line,
flushed and fsynced before the server answers, so an answered request survives a crash of the
server or the machine. A line torn by a crash mid-write was never answered; it is cut off on the
next start. From the log the session (re)writes, atomically after every change:

  <out>/rankings.jsonl   `rankings` records (python -m rlhf_jax.data check --format=rankings;
                         the label stage reads it as --config.data.rankings)
  <out>/metadata.jsonl   per record: {"id", "labeler", "likert": [K], "flags": [K], "time"}
"""
import json
import os
import pathlib
import threading
import time
from typing import Any

from rlhf_jax import atomic
from rlhf_jax.data import records
from rlhf_jax.label_ui import tasks as tasks_lib

EVENTS, RANKINGS, METADATA = 'events.jsonl', 'rankings.jsonl', 'metadata.jsonl'


def read_events(path: pathlib.Path) -> list[dict]:
  """The complete events of the log; a torn last line (no newline) is cut off the file."""
  if not path.exists():
    return []
  data = path.read_bytes()
  complete = data[:data.rfind(b'\n') + 1]
  if len(complete) < len(data):
    with open(path, 'r+b') as f:
      f.truncate(len(complete))
      os.fsync(f.fileno())
  return [json.loads(line) for line in complete.decode('utf-8').splitlines() if line.strip()]


class Session:
  """The tasks, the replayed log and the live claims of one output folder; thread-safe.

  Every public method takes the lock, so concurrent requests see and append a consistent log.
  """

  def __init__(self, task_list: list[tasks_lib.Task], out_dir: str | os.PathLike,
               overlap: float = 0.0, seed: int = 0):
    if not 0.0 <= overlap <= 1.0:
      raise ValueError(f'overlap={overlap}: expected a share in [0, 1]')
    self.tasks, self.overlap, self.seed = task_list, overlap, seed
    self.by_id = {t.id: t for t in task_list}
    self.out = pathlib.Path(out_dir)
    self.out.mkdir(parents=True, exist_ok=True)
    self.state = tasks_lib.State()
    self.claims: dict[str, tuple[str, float]] = {}
    self._lock = threading.Lock()
    events = read_events(self.out / EVENTS)
    for number, event in enumerate(events, start=1):
      if event.get('task') is not None and event['task'] not in self.by_id:
        raise ValueError(f'{self.out / EVENTS}:{number}: task {event["task"]} is not in the input; '
                         'serve the input this session was started on')
      tasks_lib.apply(self.state, event)
    self._seq = max((e['seq'] for e in events), default=0)
    self._write_outputs()

  def _append(self, event: dict) -> dict:
    self._seq += 1
    event = {'seq': self._seq, 'time': round(time.time(), 3), **event}
    with open(self.out / EVENTS, 'a', encoding='utf-8') as f:
      f.write(json.dumps(event, ensure_ascii=False) + '\n')
      f.flush()
      os.fsync(f.fileno())
    tasks_lib.apply(self.state, event)
    return event

  def _write_outputs(self) -> None:
    rankings, metadata = tasks_lib.output_records(self.tasks, self.state)
    if rankings:
      records.write_records(self.out / RANKINGS, 'rankings', rankings)
      atomic.write_lines(self.out / METADATA,
                         [json.dumps(m, ensure_ascii=False) + '\n' for m in metadata])
    else:  # readers reject empty files: no labels, no files
      for name in (RANKINGS, METADATA):
        (self.out / name).unlink(missing_ok=True)

  def _claims(self) -> dict[str, str]:
    return tasks_lib.live_claims(self.claims, time.time())

  def _view(self, labeler: str, task_id: str | None) -> dict:
    """The page's state: the task (claimed), the labeler's earlier answers to it, progress."""
    if task_id is not None:
      self.claims[labeler] = (task_id, time.time())
    else:
      self.claims.pop(labeler, None)
    draft = self.state.labels.get(task_id, {}).get(labeler) if task_id else None
    return {'task': self.by_id[task_id].public() if task_id else None,
            'draft': draft and {k: draft[k] for k in ('likert', 'flags', 'ranks')},
            'can_undo': bool(self.state.history.get(labeler)),
            'progress': tasks_lib.progress(self.tasks, self.state, self.overlap, self.seed)}

  def next(self, labeler: str) -> dict:
    """The labeler's current or next task (see tasks.next_task)."""
    with self._lock:
      task_id = tasks_lib.next_task(self.tasks, self.state, labeler, self._claims(), self.overlap,
                                    self.seed)
      return self._view(labeler, task_id)

  def _check_available(self, labeler: str, task_id: str) -> None:
    """The labeler may work on the task: they hold it, or it still needs a labeler nobody else
    holds (a page open across a server restart keeps working: claims live in memory)."""
    if self._claims().get(labeler) == task_id:
      return
    by = self.state.labels.get(task_id, {})
    held = [who for who, t in self._claims().items() if t == task_id and who != labeler]
    if labeler in by:
      raise tasks_lib.SubmissionError('task', 'already labelled by you; undo it first', 409)
    if len(by) + len(held) >= tasks_lib.needed(task_id, self.overlap, self.seed):
      raise tasks_lib.SubmissionError('task', 'labelled or open for another labeler', 409)

  def open(self, labeler: str, task_id: str) -> dict:
    """A task the labeler asks for by id (coming back to a skipped one)."""
    with self._lock:
      self._check_available(labeler, task_id)
      return self._view(labeler, task_id)

  def submit(self, body: Any) -> dict:
    """Validates and durably records a submission; answers with the labeler's next task."""
    with self._lock:
      sub = tasks_lib.check_submission(body, self.by_id)
      labeler, task_id = sub['labeler'], sub['task']
      self._check_available(labeler, task_id)
      self._append({'type': 'label', **sub})
      self._write_outputs()
      self.claims.pop(labeler, None)
      task_id = tasks_lib.next_task(self.tasks, self.state, labeler, self._claims(), self.overlap,
                                    self.seed)
      return self._view(labeler, task_id)

  def skip(self, labeler: str, task_id: str) -> dict:
    """Moves the task to the end of the labeler's queue; answers with their next task."""
    with self._lock:
      self._check_available(labeler, task_id)
      self._append({'type': 'skip', 'labeler': labeler, 'task': task_id})
      self.claims.pop(labeler, None)
      task_id = tasks_lib.next_task(self.tasks, self.state, labeler, self._claims(), self.overlap,
                                    self.seed)
      return self._view(labeler, task_id)

  def undo(self, labeler: str) -> dict:
    """Withdraws the labeler's last submission and reopens its task with their answers."""
    with self._lock:
      last = tasks_lib.last_label(self.state, labeler)
      if last is None:
        raise tasks_lib.SubmissionError('labeler', 'nothing to undo', 409)
      draft = {k: last[k] for k in ('likert', 'flags', 'ranks')}
      self._append({'type': 'undo', 'labeler': labeler, 'target': last['seq'],
                    'task': last['task']})
      self._write_outputs()
      view = self._view(labeler, last['task'])
      return {**view, 'draft': draft}

  def progress(self) -> dict:
    """tasks.progress of the session."""
    with self._lock:
      return tasks_lib.progress(self.tasks, self.state, self.overlap, self.seed)
