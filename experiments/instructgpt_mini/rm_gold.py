"""How well a reward model knows the gold score where PPO needs it: within SFT's own answers.

  python experiments/instructgpt_mini/rm_gold.py [--workdir runs/mini] [--rm rm]
                                                 [--samples WORKDIR] [--split valid]

The world knows the gold score exactly (`world.labelers.gold_utility`: the training pool's mean
utility without the per-judgment noise). For every prompt of the sample stage's `split`
(validation by default; read from --samples, default the workdir), this scores each completion
with the reward model and prints:
  - the RM's pairwise accuracy against the gold order, by the pair's policies (base-vs-SFT pairs
    are what most comparisons teach; SFT-vs-SFT pairs are all PPO can use);
  - best-of-K among each prompt's SFT completions: the mean gold score of a random one, of the
    RM's favourite and of the gold favourite, and the RM's share of the possible gain.
Pairs of equal gold score are left out. Nothing here reads the test prompts.

Wall time on the 2-core CPU (2026-12-02, beside one other job): 15 seconds for the main job's
validation samples.
"""
import argparse
import itertools
import json
import pathlib
import tempfile

import numpy as np

from rlhf_jax import config_lib, state
from rlhf_jax.stages import common
from rlhf_jax.stages import rm as rm_stage
from rlhf_jax.world import build, labelers


def rm_scores(workdir: str, rm: str, records: list[dict]) -> list[np.ndarray]:
  """The bias-free RM score of every completion, one [K] array per record."""
  config = config_lib.load_config('configs/rm.py')
  config.workdir = workdir
  model_cfg = config_lib.to_model_config(config.model)
  mesh = common.mesh(config)
  tok = common.tokenizer(config, model_cfg)
  params = common.load_init_params(rm, workdir, model_cfg, 'scalar', mesh)
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / 'completions.jsonl'
    path.write_text(''.join(json.dumps({'prompt': r['prompt'], 'completion': c.lstrip()}) + '\n'
                            for r in records for c in r['completions']))
    flat = rm_stage.demonstration_scores(params, config, tok, state.make_model(model_cfg, 'scalar'),
                                         mesh, path)
  return np.split(flat, np.cumsum([len(r['completions']) for r in records])[:-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--rm', default='rm', help='the reward model stage (folder) to judge')
  parser.add_argument('--samples', default=None, help='workdir whose samples/ to use')
  parser.add_argument('--split', default='valid', choices=('train', 'valid'))
  args = parser.parse_args()
  samples = pathlib.Path(args.samples or args.workdir) / 'samples' / f'{args.split}.jsonl'
  records = []
  for line in samples.read_text().splitlines():
    r = json.loads(line)
    # The record format forbids empty completions; a base model can write one. They are dropped.
    keep = [i for i, c in enumerate(r['completions']) if c.strip()]
    records.append({'prompt': r['prompt'], 'completions': [r['completions'][i] for i in keep],
                    'policies': [r['meta']['policies'][i] for i in keep]})
  card = json.loads((pathlib.Path(args.workdir) / 'data' / 'card.json').read_text())
  pool = build.labeler_pool(card['seed'], 'train', card['labelers']['train'])
  right, picks = {}, []
  for r, scores in zip(records, rm_scores(args.workdir, args.rm, records)):
    gold = np.array([labelers.gold_utility(pool, r['prompt'], c) for c in r['completions']])
    for a, b in itertools.combinations(range(len(gold)), 2):
      if gold[a] != gold[b]:
        kind = ' vs '.join(sorted((r['policies'][a], r['policies'][b])))
        right.setdefault(kind, []).append((scores[a] > scores[b]) == (gold[a] > gold[b]))
    sft = [i for i, p in enumerate(r['policies']) if p == 'sft']
    if len(sft) > 1:
      picks.append((gold[sft].mean(), gold[sft][np.argmax(scores[sft])], gold[sft].max()))
  print(f'{args.rm} on {samples} ({len(records)} prompts)\n\n| pair | pairs | accuracy against '
        'the gold order |\n|---|---|---|')
  for kind, hits in sorted(right.items()):
    print(f'| {kind} | {len(hits)} | {np.mean(hits):.3f} |')
  random_pick, rm_pick, gold_pick = np.mean(picks, axis=0)
  print(f'\nbest-of-K among SFT completions ({len(picks)} prompts): gold of a random one '
        f'{random_pick:.4f}, of the RM\'s pick {rm_pick:.4f}, of the gold pick {gold_pick:.4f}: '
        f'the RM gets {(rm_pick - random_pick) / (gold_pick - random_pick):.2f} of the gain')


if __name__ == '__main__':
  main()
