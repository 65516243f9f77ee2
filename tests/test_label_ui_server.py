"""The labeling server without a browser: every bad request is a 4xx that changes nothing, the
log survives restarts and torn writes, assignment and agreement, and Label Studio / Argilla."""
import http.client
import json
import pathlib
import threading

import pytest

from rlhf_jax.data import records
from rlhf_jax.label_ui import interop, server, store, tasks

K = (3, 4, 2, 3)


def _samples():
  return [{'prompt': f'Prompt {i}: summarise the text.', 'completions': [f'answer {i}.{j}'
                                                                          for j in range(k)],
           'meta': {'category': 'summarization'}} for i, k in enumerate(K)]


def _submission(task, labeler='ada', ranks=None):
  k = len(task['completions'])
  return {'task': task['id'], 'labeler': labeler, 'likert': [4] * k,
          'flags': [{'fails_instruction': False, 'inappropriate': False, 'hallucination': None,
                     'satisfies_constraint': True}] * k,
          'ranks': ranks if ranks is not None else list(range(k))}


class Client:
  """Raw HTTP to a server running in a thread (http.client sends paths as given)."""

  def __init__(self, port, token=None):
    self.port, self.token = port, token

  def request(self, method, path, body=None, headers=None, raw=None):
    conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=10)
    headers = dict(headers or {})
    if self.token:
      headers.setdefault('Authorization', f'Bearer {self.token}')
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
      headers.setdefault('Content-Type', 'application/json')
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    status, payload = response.status, response.read()
    conn.close()
    return status, payload


@pytest.fixture
def running(tmp_path):
  """(client, session, out dir) of a server over _samples() with token 'secret'."""
  source = tmp_path / 'samples.jsonl'
  records.write_records(source, 'samples', _samples())
  session = store.Session(tasks.make_tasks(records.read_records(source, 'samples')),
                          tmp_path / 'out')
  httpd = server.make_server(server.LabelApp(session), token='secret')
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield Client(httpd.server_address[1], 'secret'), session, tmp_path / 'out'
  httpd.shutdown()
  httpd.server_close()


def _snapshot(folder: pathlib.Path) -> dict:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _json(payload):
  return json.loads(payload)


def test_bad_requests_are_4xx_and_change_nothing(running):
  client, _, out = running
  status, view = client.request('GET', '/api/next?labeler=ada')
  task = _json(view)['task']
  status, _ = client.request('POST', '/api/label', _submission(task))
  assert status == 200
  status, view = client.request('GET', '/api/next?labeler=ada')
  task = _json(view)['task']  # open, unlabelled: every bad request below is about it
  before = _snapshot(out)
  assert set(before) == {'events.jsonl', 'rankings.jsonl', 'metadata.jsonl'}
  good = _submission(task)
  k = len(task['completions'])
  bad_bodies = {
      'not an object': [good],
      'missing field': {key: v for key, v in good.items() if key != 'flags'},
      'unknown field': {**good, 'note': 'x'},
      'ranks too short': {**good, 'ranks': list(range(k - 1))},
      'rank out of range': {**good, 'ranks': [0] * (k - 1) + [k]},
      'negative rank': {**good, 'ranks': [-1] + list(range(k - 1))},
      'all tie': {**good, 'ranks': [0] * k},
      'rank not an integer': {**good, 'ranks': [0.5] + list(range(1, k))},
      'rank a boolean': {**good, 'ranks': [True, False] + list(range(2, k))},
      'likert out of range': {**good, 'likert': [8] * k},
      'flag missing': {**good, 'flags': [{'fails_instruction': False}] * k},
      'flag not a boolean': {**good, 'flags': [{**good['flags'][0], 'inappropriate': None}] * k},
      'unknown prompt id': {**good, 'task': '0123456789ab'},
      'malformed prompt id': {**good, 'task': '../../etc/passwd'},
      'labeler with a path': {**good, 'labeler': '../../etc/passwd'},
      'empty labeler': {**good, 'labeler': ''},
  }
  for why, body in bad_bodies.items():
    status, payload = client.request('POST', '/api/label', body)
    assert status == 400 and 'error' in _json(payload), why
  requests = [
      ('malformed JSON', 'POST', '/api/label', {'raw': b'{"task": '}, 400),
      ('NaN in JSON', 'POST', '/api/label', {'raw': b'{"task": NaN}'}, 400),
      ('not UTF-8', 'POST', '/api/label', {'raw': b'{"task": "\xff"}'}, 400),
      ('oversized body', 'POST', '/api/label', {'raw': b' ' * (server.MAX_BODY + 1)}, 413),
      ('wrong content type', 'POST', '/api/label',
       {'raw': json.dumps(good).encode(), 'headers': {'Content-Type': 'text/plain'}}, 415),
      ('missing token', 'POST', '/api/label',
       {'body': good, 'headers': {'Authorization': ''}}, 401),
      ('wrong token', 'GET', '/api/next?labeler=ada',
       {'headers': {'Authorization': 'Bearer wrong'}}, 401),
      ('traversal in a static path', 'GET', '/static/../../../../etc/passwd', {}, 404),
      ('encoded traversal', 'GET', '/static/%2e%2e/%2e%2e/etc/passwd', {}, 404),
      ('traversal to the output', 'GET', '/static/../../out/events.jsonl', {}, 404),
      ('traversal in a task id', 'GET', '/api/task?labeler=ada&id=../../etc/passwd', {}, 400),
      ('traversal in a labeler', 'GET', '/api/next?labeler=..%2F..%2Fetc', {}, 400),
      ('labeler twice', 'GET', '/api/next?labeler=ada&labeler=bob', {}, 400),
      ('no labeler', 'GET', '/api/next', {}, 400),
      ('traversal in skip', 'POST', '/api/skip', {'body': {'labeler': 'ada',
                                                          'task': '../events.jsonl'}}, 400),
      ('skip with extra field', 'POST', '/api/skip',
       {'body': {'labeler': 'ada', 'task': task['id'], 'path': '/tmp/x'}}, 400),
      ('unknown route', 'POST', '/api/delete', {'body': {'labeler': 'ada'}}, 404),
      ('unknown page', 'GET', '/etc/passwd', {}, 404),
      ('method', 'PUT', '/api/label', {'body': good}, 405),
      ('method OPTIONS', 'OPTIONS', '/api/label', {}, 405),
      ('URL too long', 'GET', '/api/next?labeler=' + 'a' * 3000, {}, 414),
  ]
  for why, method, path, kwargs, expected in requests:
    status, payload = client.request(method, path, **kwargs)
    assert status == expected, (why, status, payload)
    assert 'error' in _json(payload), why
  assert _snapshot(out) == before
  # Conflicts: the first task again, and undo by someone with nothing to undo.
  first = _json(before['rankings.jsonl'].splitlines()[0])
  status, _ = client.request('POST', '/api/label', _submission(
      {'id': first['id'], 'completions': first['completions']}))
  assert status == 409
  status, _ = client.request('POST', '/api/undo', {'labeler': 'bob'})
  assert status == 409
  assert _snapshot(out) == before


def test_without_a_token_the_api_answers_and_remote_hosts_need_one(tmp_path):
  session = store.Session(tasks.make_tasks(_samples()), tmp_path / 'out')
  app = server.LabelApp(session)
  with pytest.raises(ValueError, match='access token'):
    server.make_server(app, host='0.0.0.0')
  with pytest.raises(ValueError, match='empty'):
    server.make_server(app, token='')
  httpd = server.make_server(app, host='0.0.0.0', token='t')
  httpd.server_close()
  httpd = server.make_server(app)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  try:
    status, payload = Client(httpd.server_address[1]).request('GET', '/api/progress')
    assert status == 200 and _json(payload)['total'] == len(K)
    status, page = Client(httpd.server_address[1]).request('GET', '/')
    assert status == 200 and b'/static/label.js' in page
  finally:
    httpd.shutdown()
    httpd.server_close()


def test_answered_submissions_survive_a_restart_and_a_torn_write(tmp_path):
  task_list = tasks.make_tasks(_samples())
  session = store.Session(task_list, tmp_path)
  view = session.next('ada')
  view = session.submit(_submission(view['task'], ranks=[1, 0, 1]))
  session.skip('ada', view['task']['id'])
  open_task = session.next('ada')['task']['id']
  # A crash in the middle of appending the next event leaves a line without its newline.
  with open(tmp_path / store.EVENTS, 'a') as f:
    f.write('{"seq": 99, "type": "label", "lab')
  again = store.Session(task_list, tmp_path)
  assert again.next('ada')['task']['id'] == open_task  # resumes where ada stopped
  assert (tmp_path / store.EVENTS).read_text().endswith('\n')
  recs = records.read_records(tmp_path / store.RANKINGS, 'rankings')
  assert [(r['id'], r['ranks'], r['labeler']) for r in recs] == [(task_list[0].id, [1, 0, 1],
                                                                  'ada')]
  assert again.progress()['skipped'] == {'ada': [task_list[1].id]}
  # Undo survives a restart too, and with no labels left there are no output files.
  again.undo('ada')
  assert not (tmp_path / store.RANKINGS).exists()
  assert store.Session(task_list, tmp_path).progress()['done'] == 0
  # A log from another input is refused rather than silently mixed.
  with pytest.raises(ValueError, match='not in the input'):
    store.Session(tasks.make_tasks(_samples()[1:]), tmp_path)


def test_labelers_get_disjoint_prompts_and_the_overlap_twice(tmp_path):
  task_list = tasks.make_tasks(_samples() * 3)  # exact duplicates get distinct ids
  assert len({t.id for t in task_list}) == len(task_list)
  session = store.Session(task_list, tmp_path / 'disjoint')
  seen = {'ada': [], 'bob': []}
  while True:
    views = {who: session.next(who) for who in seen}
    if not any(v['task'] for v in views.values()):
      break
    ids = [v['task']['id'] for v in views.values() if v['task']]
    assert len(ids) == len(set(ids))  # open at the same time, never the same prompt
    for who, v in views.items():
      if v['task']:
        seen[who].append(v['task']['id'])
        session.submit(_submission(v['task'], labeler=who))
  assert not set(seen['ada']) & set(seen['bob'])
  assert sorted(seen['ada'] + seen['bob']) == sorted(t.id for t in task_list)

  overlap = store.Session(task_list, tmp_path / 'overlap', overlap=0.5, seed=3)
  twice = [t.id for t in task_list if tasks.needed(t.id, 0.5, 3) == 2]
  assert 0 < len(twice) < len(task_list)
  for who, ranks in (('ada', None), ('bob', 'reversed')):
    while (v := overlap.next(who))['task']:
      k = len(v['task']['completions'])
      overlap.submit(_submission(v['task'], who, list(range(k))[::-1] if ranks else None))
  progress = overlap.progress()
  assert progress['done'] == progress['total'] == len(task_list) + len(twice)
  assert progress['agreement']['tasks'] == len(twice)
  assert progress['agreement']['agreement'] == 0.0  # bob reversed every order


def test_pair_agreement_counts_pairs_neither_labeler_ties():
  labels = {'t': {'a': {'ranks': [0, 1, 2]}, 'b': {'ranks': [0, 2, 1]}},
            'u': {'a': {'ranks': [0, 0, 1]}, 'b': {'ranks': [1, 0, 0]}},
            'single': {'a': {'ranks': [0, 1]}}}
  # t: (0,1) agree, (0,2) agree, (1,2) disagree; u: only (0,2) untied by both, disagree.
  assert tasks.pair_agreement(labels) == {'tasks': 2, 'pairs': 4, 'agreement': 0.5}


def test_dense_ranks_and_submission_normalisation():
  assert tasks.dense_ranks([0, 2, 2, 5]) == [0, 1, 1, 2]
  task_list = tasks.make_tasks(_samples())
  sub = tasks.check_submission(_submission(task_list[1].public(), ranks=[3, 3, 0, 1]),
                               {t.id: t for t in task_list})
  assert sub['ranks'] == [2, 2, 0, 1]


@pytest.mark.parametrize('fmt', interop.FORMATS)
def test_label_studio_and_argilla_round_trip(tmp_path, fmt):
  # Ties where K > 2: the first K - 1 completions share the best rank.
  ranked = [{'prompt': s['prompt'], 'completions': s['completions'],
             'ranks': [0] * (len(s['completions']) - 1) + [1], 'labeler': f'l{i}'}
            for i, s in enumerate(_samples())]
  src = tmp_path / 'rankings.jsonl'
  records.write_records(src, 'rankings', ranked)
  assert interop.export_file(str(src), str(tmp_path / 'tool.json'), fmt) == len(ranked)
  back = interop.import_file(str(tmp_path / 'tool.json'), fmt)
  assert [{k: r[k] for k in records.FIELDS['rankings']} for r in back] == ranked
  # Samples export as tasks without annotations, which import to nothing.
  samples = tmp_path / 'samples.jsonl'
  records.write_records(samples, 'samples', _samples())
  interop.export_file(str(samples), str(tmp_path / 'todo.json'), fmt)
  assert interop.import_file(str(tmp_path / 'todo.json'), fmt) == []


def test_label_studio_strict_order_and_argilla_bad_ranking():
  task = {'data': {'prompt': 'p', 'items': [{'id': 'x', 'body': 'a'}, {'id': 'y', 'body': 'b'}]},
          'annotations': [{'completed_by': 7, 'result': [
              {'type': 'ranker', 'value': {'ranker': {'items': ['y', 'x']}}}]}]}
  assert interop.from_label_studio(task)[0]['ranks'] == [1, 0]
  record = {'fields': {'prompt': 'p', 'completion-1': 'a', 'completion-2': 'b'},
            'responses': [{'user_id': 'u', 'status': 'submitted', 'values': {
                'ranking': {'value': [{'value': 'completion-1', 'rank': 1}]}}}]}
  with pytest.raises(records.RecordError, match='every completion'):
    interop.from_argilla(record)
