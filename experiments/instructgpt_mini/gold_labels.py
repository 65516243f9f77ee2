"""A diagnostic: rank a workdir's training comparisons by the gold score instead of a labeler.

  python experiments/instructgpt_mini/gold_labels.py --workdir DIR

Rewrites DIR/labels/rankings_train.jsonl in place (the validation and test rankings, and the
labelers everything is judged by, stay as the label stage wrote them), so that the RM trained
next in DIR (`--config=configs/rm.py --workdir=DIR`) learns from comparisons without the
labelers' per-judgment noise. It asks whether the reward model can learn the gold order among
SFT's answers when its labels are exact: if it cannot, more or cleaner labels of the same kind
will not make PPO beat SFT. Completions of equal gold score tie (RM training drops the pair); a
prompt whose completions all tie is dropped. Use it on a copy of a workdir: it is not the
world's labeling, and nothing in the pipeline reads it.

Wall time on the 2-core CPU (2026-12-02): 2 seconds for the main job's 512 rankings.
"""
import argparse
import json
import pathlib

from rlhf_jax import checkpoint
from rlhf_jax.data.records import read_records, write_records
from rlhf_jax.world import build, labelers


def gold_ranked(records: list[dict], pool: list[labelers.Labeler]) -> list[dict]:
  """The records with ranks by `labelers.gold_utility` (0 best; exact ties share a rank), less
  those whose completions all tie."""
  out = []
  for record in records:
    gold = [labelers.gold_utility(pool, record['prompt'], c) for c in record['completions']]
    ranks = labelers.ranks_from_utilities(gold, tie_eps=0.0)
    if len(set(ranks)) > 1:
      out.append({**record, 'ranks': ranks, 'labeler': 'gold'})
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  card = json.loads((workdir / 'data' / 'card.json').read_text())
  pool = build.labeler_pool(card['seed'], 'train', card['labelers']['train'])
  path = workdir / 'labels' / 'rankings_train.jsonl'
  records = read_records(path, 'rankings')
  ranked = gold_ranked(records, pool)
  checkpoint.write_json(str(workdir / 'labels' / 'gold_labels.json'),
                        {'rankings': len(records), 'kept': len(ranked)})
  write_records(path, 'rankings', ranked)
  print(f'{path}: {len(ranked)} of {len(records)} rankings kept, ranked by the gold score '
        '(the others tie throughout)')


if __name__ == '__main__':
  main()
