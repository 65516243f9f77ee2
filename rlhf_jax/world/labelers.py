"""Simulated labelers: each weighs the judgment features its own way and perceives them with noise.

A labeler's utility for a response is `weights @ judgment.features() + noise`, where the noise is
fixed per (labeler, prompt, response), so the same labeler is consistent with itself while two
labelers disagree the way people do. Pools are calibrated (see tests/test_world_labelers.py) so two
random training labelers agree on ~73% of pairwise preferences over outputs of varied quality
(paper §3.4: 72.6 +- 1.5%) and held-out labelers on ~77% (paper: 77.3 +- 1.3%).
"""
import dataclasses
import random
import zlib

import numpy as np

from rlhf_jax.world import tasks
from rlhf_jax.world.task_base import FEATURES, QUALITY_WEIGHTS

# Utilities closer than this rank as ties (the paper's UI encourages ties for similar outputs).
TIE_EPS = 0.02


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """How a pool's labelers are drawn.

  Attributes:
    mean_weights: [len(FEATURES)] average emphasis on each judgment feature.
    weight_spread: log-normal sigma of each labeler's multiplicative deviation from the mean.
    noise: typical per-judgment noise on the utility scale (utilities span about [0, 1]).
    flag_error: probability of misreporting each binary metadata flag.
  """
  mean_weights: tuple[float, ...]
  weight_spread: float
  noise: float
  flag_error: float


# Training labelers: screened for agreement with researchers, weigh helpfulness and harmlessness.
TRAIN_POOL = PoolSpec(tuple(QUALITY_WEIGHTS), weight_spread=0.6, noise=0.155, flag_error=0.05)
# Held-out labelers: unscreened, put more weight on doing the task and less on style, and (as in
# the paper) agree with each other more.
HELDOUT_POOL = PoolSpec((0.36, 0.26, 0.10, 0.12, 0.10, 0.03, 0.03), weight_spread=0.4, noise=0.135,
                        flag_error=0.04)


def _stable_hash(text: str) -> int:
  # Python's hash() of a str changes per process; crc32 keeps labels reproducible.
  return zlib.crc32(text.encode('utf-8'))


@dataclasses.dataclass(frozen=True)
class Labeler:
  """One simulated labeler.

  Attributes:
    name: id written in ranking records.
    weights: [len(FEATURES)] emphasis on each feature of the Judgment, summing to 1.
    noise: standard deviation of this labeler's per-judgment noise.
    flag_error: probability of misreporting each binary metadata flag.
    seed: this labeler's noise stream.
  """
  name: str
  weights: tuple[float, ...]
  noise: float
  flag_error: float
  seed: int

  def _rng(self, prompt: str, completion: str) -> np.random.Generator:
    return np.random.default_rng([self.seed, _stable_hash(prompt), _stable_hash(completion)])

  def utility(self, prompt: str, completion: str) -> float:
    """How much this labeler likes `completion`, about 0 (useless) to 1 (ideal)."""
    features = tasks.judge(prompt, completion).features()
    noise = self._rng(prompt, completion).normal() * self.noise
    return float(np.dot(self.weights, features) + noise)

  def rank(self, prompt: str, completions: list[str]) -> list[int]:
    """Ranks of K completions, 0 best; completions within TIE_EPS of each other tie."""
    return ranks_from_utilities([self.utility(prompt, c) for c in completions])

  def likert(self, prompt: str, completion: str) -> int:
    """Overall quality on the paper's 1-7 Likert scale."""
    return int(np.clip(np.rint(1 + 6 * self.utility(prompt, completion)), 1, 7))

  def metadata(self, prompt: str, completion: str) -> dict[str, bool | None]:
    """The paper's Table 3 flags; satisfies_constraint is None when the prompt sets none."""
    j = tasks.judge(prompt, completion)
    flip = self._rng(prompt, completion).random(4) < self.flag_error
    constraint = j.satisfies_constraint
    return {
        'fails_instruction': (not j.follows_instruction) ^ bool(flip[0]),
        'hallucination': j.hallucination ^ bool(flip[1]),
        'satisfies_constraint': None if constraint is None else constraint ^ bool(flip[2]),
        'inappropriate': j.inappropriate ^ bool(flip[3]),
    }

  def ranking_record(self, prompt: str, completions: list[str]) -> dict:
    """A rankings record in the DESIGN.md format."""
    return {'prompt': prompt, 'completions': list(completions),
            'ranks': self.rank(prompt, completions), 'labeler': self.name}


def ranks_from_utilities(utilities, tie_eps: float = TIE_EPS) -> list[int]:
  """Dense ranks, 0 for the highest utility; a run of values each within tie_eps of the run's best
  shares a rank."""
  order = np.argsort(-np.asarray(utilities, dtype=float), kind='stable')
  ranks, rank, top = [0] * len(order), -1, None
  for i in order:
    if top is None or utilities[i] < top - tie_eps:
      rank, top = rank + 1, utilities[i]
    ranks[i] = rank
  return ranks


def make_pool(seed: int = 0, n: int = 40, heldout: bool = False) -> list[Labeler]:
  """n labelers drawn from the training (or held-out) pool distribution."""
  spec = HELDOUT_POOL if heldout else TRAIN_POOL
  rng = np.random.default_rng([seed, int(heldout)])
  prefix = 'heldout' if heldout else 'train'
  pool = []
  for i in range(n):
    w = np.asarray(spec.mean_weights) * rng.lognormal(0.0, spec.weight_spread, len(FEATURES))
    pool.append(Labeler(name=f'{prefix}_{i:02d}', weights=tuple(float(x) for x in w / w.sum()),
                        noise=float(spec.noise * rng.lognormal(0.0, 0.25)),
                        flag_error=spec.flag_error, seed=int(rng.integers(2**31))))
  return pool


def measure_agreement(pool: list[Labeler], samples: list[tuple[str, list[str]]],
                      seed: int = 0) -> float:
  """How often two random labelers of `pool` prefer the same completion of a pair.

  Each sample (prompt, completions) is ranked by two distinct labelers drawn at random; every pair
  of completions that neither labeler ties counts once (ties are dropped, as in RM training).
  """
  rng = random.Random(seed)
  agree = total = 0
  for prompt, completions in samples:
    a, b = rng.sample(pool, 2)
    ra, rb = a.rank(prompt, completions), b.rank(prompt, completions)
    for i in range(len(completions)):
      for j in range(i + 1, len(completions)):
        da, db = np.sign(ra[i] - ra[j]), np.sign(rb[i] - rb[j])
        if da and db:
          agree += int(da == db)
          total += 1
  return agree / max(total, 1)


def gold_utility(pool: list[Labeler], prompt: str, completion: str) -> float:
  """The pool's mean expected utility of `completion`: its mean weights on the judgment
  features, without the per-judgment noise (the "gold" score of Gao et al. 2022, which the
  world knows exactly)."""
  weights = np.mean([labeler.weights for labeler in pool], axis=0)
  return float(weights @ tasks.judge(prompt, completion).features())


def oracle_accuracy(pool: list[Labeler], rankings: list[dict]) -> float:
  """How often `gold_utility` orders a ranked pair as the ranking does (ties in the ranking are
  dropped, as in RM training; equal gold utilities count half): the best pairwise accuracy a
  reward model that knows no labeler could expect on these rankings."""
  right = pairs = 0.0
  for record in rankings:
    gold = [gold_utility(pool, record['prompt'], c) for c in record['completions']]
    ranks = record['ranks']
    for i in range(len(gold)):
      for j in range(i + 1, len(gold)):
        if ranks[i] == ranks[j]:
          continue
        pairs += 1
        right += 0.5 if gold[i] == gold[j] else float((gold[i] > gold[j]) == (ranks[i] < ranks[j]))
  return right / max(pairs, 1.0)
