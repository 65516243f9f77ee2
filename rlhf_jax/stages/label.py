"""The label stage: K-way rankings of the sampled completions (paper section 3.4 / 3.5).

Simulated (default): each training prompt is ranked by ONE training labeler drawn at random
from the world's pool, as the paper's ~40 contractors each ranked their share of prompts. The
validation prompts are ranked twice: by training labelers (how well the RM fits the people it
learnt from) and by held-out labelers (how well it generalises to people it never saw; the paper
reports 72.4% and 69.6% RM accuracy); so are the test prompts' samples, for the final accuracy
only. The pools are the data card's: the same seed and size as `world.build.build_world` draws
them with.

Imported: with `config.data.rankings` set, human rankings are read from that JSONL (rankings
format, validated whole before anything is written); its last `VALID_FRACTION` becomes the
training-labeler validation set, and `config.data.rankings_heldout`, when given, the held-out one.

A ranking whose completions all tie holds no comparison: it is dropped and counted.
"""
import collections
import itertools
import json
import pathlib
import random
import shutil

import ml_collections

from rlhf_jax.data import records
from rlhf_jax.stages import common, layout
from rlhf_jax.stages import sample as sample_stage
from rlhf_jax.world import build, labelers

# Share of imported human rankings held out as the training labelers' validation set.
VALID_FRACTION = 0.1


def paths(labels_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """The stage's rankings files: training set, validation by training / held-out labelers."""
  return {'train': labels_dir / 'rankings_train.jsonl',
          'valid_train': labels_dir / 'rankings_valid_train.jsonl',
          'valid_heldout': labels_dir / 'rankings_valid_heldout.jsonl',
          'test_train': labels_dir / 'rankings_test_train.jsonl',
          'test_heldout': labels_dir / 'rankings_test_heldout.jsonl'}


def labeler_pools(seed: int, n_labelers: int) -> dict[str, list[labelers.Labeler]]:
  """The 'train' and 'heldout' pools of the world built with (seed, n_labelers)."""
  return {name: build.labeler_pool(seed, name, n_labelers) for name in ('train', 'heldout')}


def simulate(samples: list[dict], pool: list[labelers.Labeler],
             rng: random.Random) -> tuple[list[dict], int]:
  """(rankings records, number dropped for all-tie ranks): one random labeler of `pool` each."""
  out, all_tie = [], 0
  for s in samples:
    record = rng.choice(pool).ranking_record(s['prompt'], s['completions'])
    if len(set(record['ranks'])) < 2:
      all_tie += 1
      continue
    out.append({**record, 'meta': s.get('meta', {})})
  return out, all_tie


def _tie_share(recs: list[dict]) -> float:
  """Share of the completion pairs of `recs` that tie (the RM drops them)."""
  pairs = ties = 0
  for r in recs:
    for a, b in itertools.combinations(r['ranks'], 2):
      pairs, ties = pairs + 1, ties + (a == b)
  return ties / max(pairs, 1)


def _simulated(config, workdir: str) -> tuple[dict[str, list[dict]], dict[str, int]]:
  """Simulated rankings per output file, and all-tie drops per file."""
  card = json.loads(common.data_paths(config)['card'].read_text())
  pools = labeler_pools(config.seed, card['labelers']['train'])
  sample_files = sample_stage.paths(layout.stage_dir(workdir, 'sample'))
  jobs = {'train': ('train', 'train'), 'valid_train': ('valid', 'train'),
          'valid_heldout': ('valid', 'heldout'), 'test_train': ('test', 'train'),
          'test_heldout': ('test', 'heldout')}
  out, dropped = {}, {}
  for name, (split, pool) in jobs.items():
    if not sample_files[split].exists():  # test prompts are sampled unless switched off
      continue
    samples = records.read_records(sample_files[split], 'samples')
    # Each output gets its own labeler draw, reproducible from the seed.
    rng = random.Random(f'{config.seed}/label/{name}')
    out[name], dropped[name] = simulate(samples, pools[pool], rng)
  return out, dropped


def _imported(config) -> tuple[dict[str, list[dict]], dict[str, int]]:
  """Human rankings split into the output files (all-tie records cannot pass validation)."""
  recs = records.read_records(config.data.rankings, 'rankings')
  n_valid = max(1, round(len(recs) * VALID_FRACTION)) if len(recs) > 1 else 0
  out = {'train': recs[:len(recs) - n_valid], 'valid_train': recs[len(recs) - n_valid:]}
  if config.data.get('rankings_heldout'):
    out['valid_heldout'] = records.read_records(config.data.rankings_heldout, 'rankings')
  return out, {name: 0 for name in out}


def run(config: ml_collections.ConfigDict, labels_dir: pathlib.Path) -> dict:
  """Ranks (or imports) the comparisons; returns the stage summary."""
  source = 'human' if config.data.get('rankings') else 'simulated'
  if source == 'human':
    rankings, dropped = _imported(config)
  else:
    rankings, dropped = _simulated(config, config.workdir)
    card = json.loads(common.data_paths(config)['card'].read_text())
    pools = labeler_pools(config.seed, card['labelers']['train'])
  if labels_dir.exists():
    shutil.rmtree(labels_dir)  # an incomplete earlier attempt (no summary.json)
  summary = {'source': source}
  for name, recs in rankings.items():
    if not recs:
      continue
    records.write_records(paths(labels_dir)[name], 'rankings', recs)
    summary[name] = {
        'prompts': len(recs), 'all_tie_dropped': dropped[name],
        'labelers': len({r['labeler'] for r in recs}), 'tie_share': round(_tie_share(recs), 4),
        'k_histogram': dict(sorted(collections.Counter(
            str(len(r['completions'])) for r in recs).items()))}
    if source == 'simulated':  # the ceiling a reward model can reach on these rankings
      summary[name]['oracle_accuracy'] = round(labelers.oracle_accuracy(pools['train'], recs), 4)
  if 'train' not in summary:
    raise records.RecordError('file', 'no training rankings left to write',
                              paths(labels_dir)['train'])
  print(f'[label] {source} rankings: ' + ', '.join(
      f'{name} {summary[name]["prompts"]}' for name in rankings if name in summary), flush=True)
  if source == 'simulated':
    print('[label] oracle accuracy (noise-free mean utility of the training pool; an RM\'s '
          'ceiling): ' + ', '.join(f'{name} {summary[name]["oracle_accuracy"]:.3f}'
                                   for name in rankings if name in summary), flush=True)
  return summary
