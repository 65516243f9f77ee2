"""Builds a whole InstructGPT-mini world in memory, and its data card.

    world = build_world(seed=0, scale=0.05)
    world.prompts['rm'][0]      # {"prompt", "customer", "category"}
    card(world)['labeler_agreement_train']

Records follow the DESIGN.md formats; writing them to disk is the caller's job.
"""
import collections
import dataclasses
import random

import numpy as np

from rlhf_jax.world import corpus, corrupt, labelers, prompts, public_evals
from rlhf_jax.world import language as lang

# Pretraining documents per unit of scale: 0.05 gives 20k documents (about 0.6M words).
PRETRAIN_DOCS_PER_SCALE = 400_000
# Prompts (from the RM split) on which the labeler agreement of a card is measured.
AGREEMENT_SAMPLES = 800


@dataclasses.dataclass
class World:
  """Every dataset of one world.

  Attributes:
    seed: the world is a function of (seed, scale, n_pretrain).
    scale: prompt counts are the paper's times this.
    pretrain: pretraining records {"text"}.
    prompts: split name ('sft', 'rm', 'ppo', 'test', and the validation splits 'sft_valid',
      'rm_valid', 'ppo_valid') -> prompt records; every customer is in one split only.
    demonstrations: 'sft', 'rm' and 'sft_valid' -> {"prompt", "completion"} for every prompt of
      that split (RM demonstrations set the reward bias so demonstrations score 0 on average).
    evals: public NLP evals, see public_evals.public_evals.
    evals_valid: their validation twin (same tasks and held-out text, another draw), for choices
      made on the pretraining distribution (App. E.6's gamma) without touching `evals`.
    few_shot_prefix: the fixed prefix of the "GPT-3 prompted" baseline.
    labelers: 'train' and 'heldout' pools.
  """
  seed: int
  scale: float
  pretrain: list[dict]
  prompts: dict[str, list[dict]]
  demonstrations: dict[str, list[dict]]
  evals: dict[str, list[dict]]
  evals_valid: dict[str, list[dict]]
  few_shot_prefix: str
  labelers: dict[str, list[labelers.Labeler]]


def _stream(seed: int, name: str) -> int:
  # Independent, reproducible sub-seeds: changing one dataset's size leaves the others unchanged.
  return int.from_bytes(random.Random(f'{seed}/{name}').randbytes(4), 'little')


def labeler_pool(seed: int, name: str, n_labelers: int = 40) -> list[labelers.Labeler]:
  """The world's 'train' or 'heldout' labeler pool, as build_world draws it (and the card counts)."""
  return labelers.make_pool(_stream(seed, 'labelers'), n_labelers, heldout=name == 'heldout')


def build_world(seed: int = 0, scale: float = 0.05, n_pretrain: int | None = None,
                n_labelers: int = 40) -> World:
  """Samples all datasets of a world.

  Args:
    seed: master seed.
    scale: multiplies the paper's prompt counts (SFT 13k, RM 33k, PPO 31k, test 3.2k).
    n_pretrain: pretraining documents; default PRETRAIN_DOCS_PER_SCALE * scale.
    n_labelers: size of each labeler pool (paper: about 40).
  """
  n_pretrain = n_pretrain or max(1, round(PRETRAIN_DOCS_PER_SCALE * scale))
  splits = prompts.prompt_splits(_stream(seed, 'prompts'), scale)
  return World(
      seed=seed, scale=scale,
      pretrain=corpus.documents(random.Random(_stream(seed, 'pretrain')), n_pretrain),
      prompts=splits,
      demonstrations={s: prompts.demonstrations(splits[s], _stream(seed, f'demos/{s}'))
                      for s in ('sft', 'rm', 'sft_valid')},
      evals=public_evals.public_evals(_stream(seed, 'evals')),
      evals_valid=public_evals.public_evals(_stream(seed, 'evals_valid')),
      few_shot_prefix=corpus.few_shot_prefix(_stream(seed, 'few_shot')),
      labelers={name: labeler_pool(seed, name, n_labelers) for name in ('train', 'heldout')})


def _length_stats(texts: list[str]) -> dict[str, float]:
  n = np.array([len(lang.words(t)) for t in texts] or [0])
  return {'mean_words': round(float(n.mean()), 2), 'median_words': float(np.median(n)),
          'max_words': int(n.max())}


def measure_world_agreement(world: World) -> dict[str, float]:
  """Pairwise agreement of each pool on varied-quality responses to the world's RM prompts."""
  sample_prompts = [r['prompt'] for r in world.prompts['rm'][:AGREEMENT_SAMPLES]]
  samples = corrupt.calibration_samples(sample_prompts, _stream(world.seed, 'calibration'))
  return {f'labeler_agreement_{name}': round(labelers.measure_agreement(pool, samples), 4)
          for name, pool in world.labelers.items()}


def card(world: World) -> dict:
  """A JSON-able summary: counts per split and category, lengths, examples, labeler agreement."""
  splits = {}
  for name, records in world.prompts.items():
    splits[name] = {
        'prompts': len(records),
        'customers': len({r['customer'] for r in records} - {prompts.LABELER}),
        'labeler_written': sum(r['customer'] == prompts.LABELER for r in records),
        'categories': dict(sorted(collections.Counter(r['category'] for r in records).items())),
        'prompt_length': _length_stats([r['prompt'] for r in records]),
        'examples': records[:2],
    }
  for name, demos in world.demonstrations.items():
    splits[name]['demonstrations'] = len(demos)
    splits[name]['demonstration_length'] = _length_stats([d['completion'] for d in demos])
    splits[name]['demonstration_examples'] = demos[:2]
  return {
      'seed': world.seed, 'scale': world.scale,
      'pretrain': {'documents': len(world.pretrain),
                   'length': _length_stats([r['text'] for r in world.pretrain]),
                   'examples': world.pretrain[:3]},
      'splits': splits,
      'evals': {name: len(items) for name, items in world.evals.items()},
      'few_shot_prefix': world.few_shot_prefix,
      'labelers': {name: len(pool) for name, pool in world.labelers.items()},
      **measure_world_agreement(world),
  }
