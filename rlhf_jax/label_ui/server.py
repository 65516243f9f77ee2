"""The HTTP side: a standard-library threading server in front of a labeling Session or a review.

Security rules, enforced here for every request:
  - Only named routes answer; static files and plots come from a fixed table built at start
    (no request parameter ever becomes a file path), so nothing outside the package's static
    folder, the output folder or the named input can be read or written.
  - Bodies are JSON objects of at most MAX_BODY bytes with a Content-Length; URLs at most
    MAX_URL characters.
  - With a token, every /api/ request must carry `Authorization: Bearer TOKEN` (the page reads
    the token from the URL fragment, which browsers never send to the server). The page assets
    hold no data and load without it. A server bound to anything but a loopback address refuses
    to start without a token.
  - Every refused request is a 4xx with {"error": "..."} and changes nothing.
"""
import hmac
import http.server
import ipaddress
import json
import pathlib
import socket
import urllib.parse
from typing import Any, Callable, NamedTuple

from rlhf_jax.label_ui import store, tasks as tasks_lib

STATIC = pathlib.Path(__file__).parent / 'static'
MAX_BODY = 64 * 1024  # a submission is K likerts, flags and ranks: a few KB at K = 9
MAX_URL = 2048
CONTENT_TYPES = {'.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
                 '.css': 'text/css; charset=utf-8', '.png': 'image/png'}


class Raw(NamedTuple):
  """An answer sent as is rather than as JSON."""
  content_type: str
  data: bytes


class HTTPError(Exception):
  """An answer other than 200: status and a message for the page."""

  def __init__(self, status: int, message: str):
    self.status, self.message = status, message
    super().__init__(f'{status} {message}')


def static_table(names: list[str], index: str) -> dict[str, pathlib.Path]:
  """URL path -> file for the page assets; `index` is served at '/'."""
  table = {f'/static/{name}': STATIC / name for name in names}
  table['/'] = STATIC / index
  return table


def is_loopback(host: str) -> bool:
  """Whether `host` (a name or address) only accepts connections from this machine."""
  try:
    return all(ipaddress.ip_address(info[4][0]).is_loopback
               for info in socket.getaddrinfo(host, None))
  except (socket.gaierror, ValueError):
    return False


def _param(query: dict[str, list[str]], name: str) -> str:
  values = query.get(name)
  if not values:
    raise HTTPError(400, f'{name}: missing query parameter')
  if len(values) > 1:
    raise HTTPError(400, f'{name}: given more than once')
  return values[0]


class LabelApp:
  """The labeling API over a store.Session.

  Routes (labeler names and task ids are checked by tasks.check_labeler / check_task_id):
    GET  /api/next?labeler=NAME         the labeler's current or next task, and progress
    GET  /api/task?labeler=NAME&id=ID   open a task by id (come back to a skipped one)
    GET  /api/progress                  done / total, per labeler, agreement on the overlap
    POST /api/label  {submission}       record a submission (tasks.check_submission)
    POST /api/skip   {"labeler", "task"}
    POST /api/undo   {"labeler"}
  """
  static = static_table(['label.js', 'style.css'], 'label.html')

  def __init__(self, session: store.Session):
    self.session = session

  def get(self, path: str, query: dict[str, list[str]]) -> Any:
    """Answers a GET /api/ route."""
    if path == '/api/progress':
      return self.session.progress()
    labeler = tasks_lib.check_labeler(_param(query, 'labeler'))
    if path == '/api/next':
      return self.session.next(labeler)
    if path == '/api/task':
      return self.session.open(labeler,
                               tasks_lib.check_task_id(_param(query, 'id'), self.session.by_id))
    raise HTTPError(404, f'no route {path}')

  def post(self, path: str, body: Any) -> Any:
    """Answers a POST /api/ route."""
    if path == '/api/label':
      return self.session.submit(body)
    if not isinstance(body, dict):
      raise HTTPError(400, 'body: expected a JSON object')
    allowed = {'/api/skip': {'labeler', 'task'}, '/api/undo': {'labeler'}}.get(path)
    if allowed is None:
      raise HTTPError(404, f'no route {path}')
    if set(body) != allowed:
      raise HTTPError(400, f'body: expected exactly the fields {", ".join(sorted(allowed))}')
    labeler = tasks_lib.check_labeler(body['labeler'])
    if path == '/api/undo':
      return self.session.undo(labeler)
    return self.session.skip(labeler, tasks_lib.check_task_id(body['task'], self.session.by_id))


def make_handler(app, token: str | None) -> type[http.server.BaseHTTPRequestHandler]:
  """A request handler class serving `app` (LabelApp or review.ReviewApp)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    """Routes, checks and answers one request; see the module docstring."""
    server_version = 'rlhf_jax-label'
    sys_version = ''

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      pass  # the terminal shows the URL and errors, not every request

    def _send(self, status: int, content_type: str, data: bytes) -> None:
      self.send_response(status)
      self.send_header('Content-Type', content_type)
      self.send_header('Content-Length', str(len(data)))
      self.send_header('Cache-Control', 'no-store')
      self.send_header('X-Content-Type-Options', 'nosniff')
      # The pages load only their own scripts and styles: nothing from the network.
      self.send_header('Content-Security-Policy', "default-src 'self'; img-src 'self' blob:")
      self.end_headers()
      self.wfile.write(data)

    def _json(self, status: int, value: Any) -> None:
      self._send(status, 'application/json', json.dumps(value).encode('utf-8'))

    def _authorized(self) -> bool:
      if token is None:
        return True
      given = self.headers.get('Authorization', '')
      return hmac.compare_digest(given.encode(), f'Bearer {token}'.encode())

    def _read_body(self) -> Any:
      length = self.headers.get('Content-Length')
      if length is None or not length.isdigit():
        raise HTTPError(411, 'a Content-Length header is required')
      if int(length) > MAX_BODY:
        raise HTTPError(413, f'body over {MAX_BODY} bytes')
      raw = self.rfile.read(int(length))
      try:
        return json.loads(raw.decode('utf-8'), parse_constant=_no_constant)
      except (UnicodeDecodeError, ValueError) as e:
        raise HTTPError(400, f'body: not JSON ({e})') from None

    def _handle(self, method: str, answer: Callable[[str, Any], Any]) -> None:
      try:
        if len(self.path) > MAX_URL:
          raise HTTPError(414, 'URL too long')
        url = urllib.parse.urlsplit(self.path)
        if method == 'GET' and url.path in app.static:
          file = app.static[url.path]
          self._send(200, CONTENT_TYPES[file.suffix], file.read_bytes())
          return
        if not url.path.startswith('/api/'):
          raise HTTPError(404, f'no page {url.path}')
        if not self._authorized():
          raise HTTPError(401, 'missing or wrong access token')
        if method == 'POST':
          if self.headers.get('Content-Type', '').split(';')[0].strip() != 'application/json':
            raise HTTPError(415, 'send the body as application/json')
          value = answer(url.path, self._read_body())
        else:
          value = answer(url.path, urllib.parse.parse_qs(url.query, keep_blank_values=True,
                                                         strict_parsing=False))
        if isinstance(value, Raw):
          self._send(200, value.content_type, value.data)
        else:
          self._json(200, value)
      except HTTPError as e:
        self._json(e.status, {'error': e.message})
      except tasks_lib.SubmissionError as e:
        self._json(e.status, {'error': str(e)})

    def do_GET(self):  # noqa: N802 (http.server's name)
      self._handle('GET', app.get)

    def do_POST(self):  # noqa: N802
      self._handle('POST', app.post)

    def _refuse(self):
      self._json(405, {'error': f'method {self.command} not allowed'})

    do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

  return Handler


def _no_constant(name: str):
  raise ValueError(f'{name} is not JSON')


def make_server(app, host: str = '127.0.0.1', port: int = 0,
                token: str | None = None) -> http.server.ThreadingHTTPServer:
  """A bound (not yet serving) server; port 0 picks a free port (server.server_address[1])."""
  if token is not None and not token:
    raise ValueError('the access token is empty')
  if token is None and not is_loopback(host):
    raise ValueError(f'--host={host} accepts other machines: give an access token (--token or '
                     'RLHF_JAX_LABEL_TOKEN)')
  server = http.server.ThreadingHTTPServer((host, port), make_handler(app, token))
  server.daemon_threads = True
  return server
