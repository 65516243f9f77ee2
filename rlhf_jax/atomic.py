"""Replacing a file atomically: a reader, or the file left by a crash, is the old file or the
whole new one, never part of either."""
import os
import uuid
from collections.abc import Iterable


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Writes `lines` to `path` through a synced temporary file beside it, then renames it over.

  The temporary file is removed whatever happens, so a failed write leaves `path` as it was and
  nothing beside it. OSError (a read-only folder, a full disk) propagates.
  """
  path = os.fspath(path)
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f'.{name}.{uuid.uuid4().hex[:12]}.tmp')
  try:
    # os.open with mode 0o666 honours the umask, unlike tempfile.mkstemp's private 0o600.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), 'w',
              encoding='utf-8', newline='\n') as f:
      f.writelines(lines)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
