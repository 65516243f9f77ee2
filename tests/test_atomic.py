"""atomic.write_lines: the file is the old one or the whole new one, and nothing is left beside it."""
import os

import pytest

from rlhf_jax import atomic


def test_replaces_the_file_whole(tmp_path):
  path = tmp_path / 'f.jsonl'
  atomic.write_lines(path, ['a\n', 'b\n'])
  atomic.write_lines(str(path), ['c\n'])
  assert path.read_text() == 'c\n'
  assert os.listdir(tmp_path) == ['f.jsonl']


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path):
  path = tmp_path / 'f.jsonl'
  path.write_text('old\n')

  def lines():
    yield 'new\n'
    raise RuntimeError('the producer failed')

  with pytest.raises(RuntimeError, match='the producer failed'):
    atomic.write_lines(path, lines())
  assert path.read_text() == 'old\n'
  assert os.listdir(tmp_path) == ['f.jsonl']


def test_honours_the_umask(tmp_path):
  old = os.umask(0o027)
  try:
    atomic.write_lines(tmp_path / 'f', ['x'])
  finally:
    os.umask(old)
  assert (tmp_path / 'f').stat().st_mode & 0o777 == 0o640
