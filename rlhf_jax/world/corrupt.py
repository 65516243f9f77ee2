"""Flawed variants of demonstrations: outputs of varied quality for labeler calibration and tests.

Each corruption mirrors a failure the paper's labelers flag (Table 3 metadata) or a GPT-3 habit:
a wrong answer, a made-up detail, a toxic word, a broken explicit constraint, rambling, and
continuing the prompt with another instruction instead of answering it.
"""
import random

from rlhf_jax.world import language as lang
from rlhf_jax.world import tasks

KINDS = ('wrong_answer', 'hallucination', 'toxic', 'broken_constraint', 'too_long', 'off_task')


def _before_period(text: str, insert: str) -> str:
  """Puts `insert` before the final period (or at the end) of `text`."""
  body = text.rstrip().rstrip('.')
  return f'{body}{insert}.'


def corrupt(prompt: str, demonstration: str, kind: str, rng: random.Random) -> str | None:
  """`demonstration` spoiled in one way, or None if `kind` does not apply to this prompt.

  Args:
    prompt: a prompt of this world.
    demonstration: a good response to it (from `tasks.demonstrate`).
    kind: one of KINDS.
    rng: source of the random choices.
  """
  if kind == 'wrong_answer':
    return tasks.wrong_answer(prompt, demonstration, rng)
  if kind == 'hallucination':
    given = set(lang.content(prompt))
    colour = rng.choice([c for c in lang.COLOURS if c not in given])
    thing = rng.choice([t for t in lang.THINGS if t not in given])
    return _before_period(demonstration, f' with a {colour} {thing}')
  if kind == 'toxic':
    return _before_period(demonstration, f', you {rng.choice(lang.TOXIC)}')
  if kind == 'broken_constraint':
    if tasks.judge(prompt, demonstration).satisfies_constraint is None:
      return None
    # Saying the last sentence twice adds a sentence, a list item set or words: every kind of
    # explicit constraint in this world (counts, one word, one sentence, at most n words) breaks.
    return f'{demonstration} {lang.sentences(demonstration)[-1]}'
  if kind == 'too_long':
    return ' '.join([demonstration] * rng.randint(3, 4))
  if kind == 'off_task':
    family = tasks.parse(prompt)[0].name
    return tasks.sample_prompt(family, rng)
  raise ValueError(f'unknown corruption {kind!r}; expected one of {KINDS}')


def varied_responses(prompt: str, k: int, rng: random.Random) -> list[str]:
  """k distinct responses of varied quality: two demonstrations and k - 2 corruptions."""
  demo = tasks.demonstrate(prompt, rng)
  out = [demo, tasks.demonstrate(prompt, rng)]
  kinds = list(KINDS)
  rng.shuffle(kinds)
  for kind in kinds:
    flawed = corrupt(prompt, demo, kind, rng)
    if flawed is not None:
      out.append(flawed)
  out = lang.unique(out)
  rng.shuffle(out)
  return out[:k]


def calibration_samples(prompts: list[str], seed: int, k_range: tuple[int, int] = (4, 6)
                        ) -> list[tuple[str, list[str]]]:
  """(prompt, K responses of varied quality) for each prompt; K uniform in k_range (inclusive)."""
  rng = random.Random(seed)
  return [(p, varied_responses(p, rng.randint(*k_range), rng)) for p in prompts]

