"""Command line for data files.

  python -m rlhf_jax.data check --format=FORMAT FILE...
      Validates every record of each FILE and prints a summary per file. FORMAT is a record
      kind (text, demonstrations, rankings, prompts) or a public source (hh-rlhf, tldr), which
      is checked by converting it (to --kind, default rankings).
  python -m rlhf_jax.data convert --format=SOURCE [--kind=rankings] SRC DEST
      Imports a public source file into a records file (written atomically).

A bad record prints `FILE:LINE: field: what is wrong` on stderr. Exit status: 0 when every
file is good, 1 when one is bad, 2 for a usage error.
"""
import collections
import os
import sys
from typing import Sequence, TextIO

from absl import flags

from rlhf_jax.data import importers, records

FORMATS = records.KINDS + importers.SOURCES
COMMANDS = ('check', 'convert')
USAGE = ('usage: python -m rlhf_jax.data check --format={' + ','.join(FORMATS) + '} FILE...\n'
         '       python -m rlhf_jax.data convert --format={' + ','.join(importers.SOURCES) +
         '} [--kind={' + ','.join(importers.TARGET_KINDS) + '}] SRC DEST')
EXIT_OK, EXIT_BAD_DATA, EXIT_USAGE = 0, 1, 2


def _flag_values() -> flags.FlagValues:
  """Fresh flags per call (not absl's global FLAGS) so main() can run many times in tests."""
  fv = flags.FlagValues()
  flags.DEFINE_enum('format', None, FORMATS, 'Record kind or public source of the files.',
                    flag_values=fv)
  flags.DEFINE_enum('kind', 'rankings', importers.TARGET_KINDS,
                    'Record kind a public source is converted to.', flag_values=fv)
  return fv


def load(path: str, fmt: str, kind: str = 'rankings') -> tuple[str, importers.Imported]:
  """Reads and validates a file of `fmt`; returns (record kind, Imported). Raises RecordError."""
  if fmt in records.KINDS:
    return fmt, importers.Imported(records.read_records(path, fmt), [])
  return kind, importers.import_file(path, fmt, kind)


def _chars(name: str, texts: Sequence[str]) -> str:
  lengths = [len(t) for t in texts]
  return f'{name}: chars mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}'


def _counts(counter: collections.Counter, limit: int = 10) -> str:
  shown = ', '.join(f'{key} x {n}' for key, n in counter.most_common(limit))
  return shown + (f', ... ({len(counter) - limit} more)' if len(counter) > limit else '')


def summarize(kind: str, recs: Sequence[dict]) -> list[str]:
  """Human-readable summary lines of non-empty validated records of one kind."""
  lines = [f'{len(recs)} {kind} records']
  for field in records.FIELDS[kind]:
    if field in ('text', 'prompt', 'completion'):
      lines.append(_chars(field, [r[field] for r in recs]))
  if kind == 'rankings':
    lines.append(_chars('completions', [c for r in recs for c in r['completions']]))
    k_counts = collections.Counter(len(r['completions']) for r in recs)
    lines.append('K: ' + ', '.join(f'{k} x {n}' for k, n in sorted(k_counts.items())))
    ties = sum(len(set(r['ranks'])) < len(r['ranks']) for r in recs)
    lines.append(f'records with ties: {ties} ({100 * ties / len(recs):.1f}%)')
    lines.append(f'labelers: {len({r["labeler"] for r in recs})}')
  if kind == 'prompts':
    lines.append(f'customers: {len({r["customer"] for r in recs})}')
    lines.append('categories: ' + _counts(collections.Counter(r['category'] for r in recs)))
  return lines


def _skipped(imported: importers.Imported) -> list[str]:
  if not imported.skipped:
    return []
  return [f'skipped {len(imported.skipped)} source records, first: {imported.skipped[0]}']


def check(paths: Sequence[str], fmt: str, kind: str, out: TextIO, err: TextIO) -> int:
  """Checks each file, printing a summary to `out` or its first error to `err`."""
  status = EXIT_OK
  for path in paths:
    try:
      record_kind, imported = load(path, fmt, kind)
    except records.RecordError as e:
      print(e, file=err)
      status = EXIT_BAD_DATA
      continue
    print(f'{path}: OK', file=out)
    for line in summarize(record_kind, imported.records) + _skipped(imported):
      print('  ' + line, file=out)
  return status


def convert(src: str, dest: str, fmt: str, kind: str, out: TextIO, err: TextIO) -> int:
  """Imports `src` of source `fmt` into a `kind` records file `dest`."""
  try:
    if os.path.exists(src) and os.path.exists(dest) and os.path.samefile(src, dest):
      raise records.RecordError('file', 'is also the source; the source would be overwritten',
                                dest)
    imported = importers.import_file(src, fmt, kind)
    n = records.write_records(dest, kind, imported.records)
  except records.RecordError as e:
    print(e, file=err)
    return EXIT_BAD_DATA
  print(f'{dest}: wrote {n} {kind} records from {src}', file=out)
  for line in _skipped(imported):
    print('  ' + line, file=out)
  return EXIT_OK


def _usage_error(message: str, err: TextIO) -> int:
  print(f'error: {message}\n{USAGE}', file=err)
  return EXIT_USAGE


def main(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
  """Runs the command in argv (argv[0] is the program name); returns the exit status."""
  fv = _flag_values()
  if any(a in ('-h', '--help', '-help') for a in argv[1:]):
    print(USAGE + '\n\n' + fv.get_help(), file=out)
    return EXIT_OK
  try:
    args = fv(list(argv))[1:]
  except flags.Error as e:
    return _usage_error(str(e), err)
  if not args or args[0] not in COMMANDS:
    return _usage_error(f'expected a command, one of {COMMANDS}', err)
  command, paths = args[0], args[1:]
  if fv.format is None:
    return _usage_error('--format is required', err)
  if command == 'check':
    if not paths:
      return _usage_error('no FILE given', err)
    return check(paths, fv.format, fv.kind, out, err)
  if fv.format not in importers.SOURCES or len(paths) != 2:
    return _usage_error(f'convert needs --format in {importers.SOURCES}, SRC and DEST', err)
  return convert(paths[0], paths[1], fv.format, fv.kind, out, err)


if __name__ == '__main__':
  sys.exit(main(sys.argv))
