"""Prompt datasets split by customer, as in the paper (§3.2, Table 6), and their demonstrations.

Every API customer belongs to exactly one split, so test customers never appear in training.
SFT and RM splits also hold labeler-written prompts (customer "labeler"); PPO and test hold only
customer prompts. Prompt texts may repeat across customers, as real users' prompts do.
"""
import random

from rlhf_jax.world import tasks

LABELER = 'labeler'
# Paper Table 6 training and validation prompts (and Table 9's test set), by source. The
# validation splits come last so that adding them left the other splits' prompts unchanged.
PAPER_COUNTS = {
    'sft': {'labeler': 11_295, 'customer': 1_430},
    'rm': {'labeler': 6_623, 'customer': 26_584},
    'ppo': {'labeler': 0, 'customer': 31_144},
    'test': {'labeler': 0, 'customer': 3_196},
    'sft_valid': {'labeler': 1_550, 'customer': 103},
    'rm_valid': {'labeler': 3_488, 'customer': 14_399},
    'ppo_valid': {'labeler': 0, 'customer': 16_185},
}
# Prompts per customer: paper caps each user ID at 200; most send a few dozen.
_MEAN_PER_CUSTOMER, _MAX_PER_CUSTOMER = 20, 200
# Share of a customer's prompts from their main use-case (the rest follow Table 1).
_FOCUS = 0.5


def split_counts(scale: float) -> dict[str, dict[str, int]]:
  """Paper counts times `scale`, rounded, at least 1 where the paper has any."""
  return {split: {src: max(1, round(n * scale)) if n else 0 for src, n in by_source.items()}
          for split, by_source in PAPER_COUNTS.items()}


def _table1(rng: random.Random) -> str:
  names = list(tasks.TABLE1_SHARES)
  return rng.choices(names, [tasks.TABLE1_SHARES[n] for n in names])[0]


def _customer_prompts(rng: random.Random, customer: str, n: int) -> list[dict]:
  main = _table1(rng)
  records = []
  for _ in range(n):
    category = main if rng.random() < _FOCUS else _table1(rng)
    records.append({'prompt': tasks.sample_prompt(category, rng), 'customer': customer,
                    'category': category})
  return records


def _labeler_prompts(rng: random.Random, n: int) -> list[dict]:
  # Labelers were asked for diverse tasks, so their prompts cover the families evenly.
  names = sorted(tasks.FAMILIES)
  records = []
  for _ in range(n):
    category = rng.choice(names)
    records.append({'prompt': tasks.sample_prompt(category, rng), 'customer': LABELER,
                    'category': category})
  return records


def prompt_splits(seed: int, scale: float) -> dict[str, list[dict]]:
  """Prompt records {"prompt", "customer", "category"} for the 'sft', 'rm', 'ppo', 'test' splits
  and the validation splits 'sft_valid', 'rm_valid', 'ppo_valid' (paper Table 6).

  Args:
    seed: the whole output is a function of (seed, scale).
    scale: multiplies the paper's counts (0.05 gives about 640 / 1660 / 1560 / 160 prompts, and
      83 / 894 / 809 for validation).
  """
  rng = random.Random(seed)
  next_customer = 0
  splits = {}
  for split, counts in split_counts(scale).items():
    records = _labeler_prompts(rng, counts['labeler'])
    remaining = counts['customer']
    while remaining:
      size = min(remaining, _MAX_PER_CUSTOMER,
                 1 + int(rng.expovariate(1 / (_MEAN_PER_CUSTOMER - 1))))
      records += _customer_prompts(rng, f'customer_{next_customer:05d}', size)
      next_customer += 1
      remaining -= size
    rng.shuffle(records)
    splits[split] = records
  return splits


def demonstrations(records: list[dict], seed: int) -> list[dict]:
  """Demonstration records {"prompt", "completion"}: the ideal response to each prompt."""
  rng = random.Random(seed)
  return [{'prompt': r['prompt'], 'completion': tasks.demonstrate(r['prompt'], rng)}
          for r in records]
