"""Command line: serve the labeling page or the eval review, convert to and from other tools.

  python -m rlhf_jax.label_ui serve (--workdir=DIR [--split=train|valid] | --samples=FILE)
      [--out=DIR] [--overlap=0.1] [--seed=0] [--host=127.0.0.1] [--port=8765] [--token=T]
  python -m rlhf_jax.label_ui review --workdir=DIR [--host=...] [--port=...] [--token=T]
  python -m rlhf_jax.label_ui export --format={label-studio,argilla} IN.jsonl OUT.json
  python -m rlhf_jax.label_ui import --format={label-studio,argilla} IN.json OUT.jsonl

serve's output folder (default <workdir>/human_labels/<split>, or beside --samples) holds
events.jsonl, rankings.jsonl and metadata.jsonl (see store.py); rerun the same command to resume.
The token may also come from RLHF_JAX_LABEL_TOKEN; a --host other than loopback requires one.
Exit status: 0, 1 for bad data, 2 for a usage error.
"""
import argparse
import os
import pathlib
import secrets
import sys
from typing import Sequence

from rlhf_jax.data import records
from rlhf_jax.label_ui import interop, review, server, store, tasks

EXIT_OK, EXIT_BAD_DATA, EXIT_USAGE = 0, 1, 2
# The sample stage's files (stages.sample.paths), named here so serving does not import jax.
SPLITS = ('train', 'valid')
TOKEN_ENV = 'RLHF_JAX_LABEL_TOKEN'


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m rlhf_jax.label_ui', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest='command', required=True)
  for name in ('serve', 'review'):
    p = commands.add_parser(name)
    p.add_argument('--workdir', help='a workdir with a sample (serve) or eval (review) stage')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=8765, help='0 picks a free port')
    p.add_argument('--token', default=os.environ.get(TOKEN_ENV) or None,
                   help=f'access token for /api/ (default ${TOKEN_ENV}); "random" makes one')
  serve = commands.choices['serve']
  serve.add_argument('--samples', help='a samples JSONL (prompt + K completions per line)')
  serve.add_argument('--split', default='train', choices=SPLITS)
  serve.add_argument('--out', help='output folder (events, rankings, metadata)')
  serve.add_argument('--overlap', type=float, default=0.0,
                     help='share of prompts labelled by two labelers, for agreement')
  serve.add_argument('--seed', type=int, default=0, help='which prompts are in the overlap')
  for name in ('export', 'import'):
    p = commands.add_parser(name)
    p.add_argument('--format', required=True, choices=interop.FORMATS)
    p.add_argument('src')
    p.add_argument('dest')
  return parser


def _session(args) -> store.Session:
  if bool(args.samples) == bool(args.workdir):
    raise ValueError('give exactly one of --workdir and --samples')
  if args.samples:
    samples = pathlib.Path(args.samples)
    out = args.out or samples.with_name(samples.stem + '_labels')
  else:
    samples = pathlib.Path(args.workdir) / 'samples' / f'{args.split}.jsonl'
    out = args.out or pathlib.Path(args.workdir) / 'human_labels' / args.split
  task_list = tasks.make_tasks(records.read_records(samples, 'samples'))
  return store.Session(task_list, out, overlap=args.overlap, seed=args.seed)


def _serve(app, args, what: str) -> None:
  token = secrets.token_urlsafe(24) if args.token == 'random' else args.token
  httpd = server.make_server(app, args.host, args.port, token)
  host, port = httpd.server_address[:2]
  shown = f'[{host}]' if ':' in host else host
  print(f'[label_ui] {what} at http://{shown}:{port}/' + (f'#token={token}' if token else ''),
        flush=True)
  try:
    httpd.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    httpd.server_close()


def main(argv: Sequence[str]) -> int:
  """Runs the command in argv (without the program name); returns the exit status."""
  args = _parser().parse_args(argv)
  try:
    if args.command == 'serve':
      session = _session(args)
      print(f'[label_ui] {len(session.tasks)} prompts; labels in {session.out}', flush=True)
      _serve(server.LabelApp(session), args, 'labeling page')
    elif args.command == 'review':
      if not args.workdir:
        raise ValueError('--workdir is required')
      _serve(review.ReviewApp(args.workdir), args, 'eval review')
    elif args.command == 'export':
      n = interop.export_file(args.src, args.dest, args.format)
      print(f'{args.dest}: wrote {n} {args.format} tasks from {args.src}')
    else:
      n = records.write_records(args.dest, 'rankings', interop.import_file(args.src, args.format))
      print(f'{args.dest}: wrote {n} rankings records from {args.src}')
  except records.RecordError as e:
    print(e, file=sys.stderr)
    return EXIT_BAD_DATA
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_USAGE
  return EXIT_OK


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
