"""The task families of InstructGPT-mini and the entry points: sample, parse, demonstrate, judge.

    >>> prompt = sample_prompt('open_qa', random.Random(0))
    >>> judge(prompt, demonstrate(prompt, random.Random(0))).acceptable
    True
"""
import functools
import random

from rlhf_jax.world import closed_tasks, open_tasks
from rlhf_jax.world.task_base import Family, Judgment, finish

FAMILIES: dict[str, Family] = {f.name: f for f in (
    open_tasks.GENERATION, open_tasks.OPEN_QA, open_tasks.BRAINSTORMING, closed_tasks.REWRITE,
    closed_tasks.SUMMARIZATION, closed_tasks.CLASSIFICATION, closed_tasks.CLOSED_QA,
    closed_tasks.EXTRACTION)}

# Use-case shares of API prompts, paper Table 1, restricted to the families this world has (chat and
# "other" are left out); sampling renormalises them.
TABLE1_SHARES = {'generation': 45.6, 'open_qa': 12.4, 'brainstorming': 11.2, 'rewrite': 6.6,
                 'summarization': 4.2, 'classification': 3.5, 'closed_qa': 2.6, 'extraction': 1.9}
CLOSED_DOMAIN = tuple(name for name, f in FAMILIES.items() if f.closed_domain)


def normalize(prompt: str) -> str:
  """Prompt text as the templates expect it: lower case, single spaces."""
  return ' '.join(prompt.lower().split())


def parse(prompt: str) -> tuple[Family, dict] | None:
  """(family, fields) of a prompt of this world, or None if no template matches."""
  text = normalize(prompt)
  for family in FAMILIES.values():
    for template in family.templates:
      fields = template.match(text)
      if fields is not None:
        return family, fields
  return None


def sample_prompt(category: str, rng: random.Random) -> str:
  """A random prompt of one task family."""
  return FAMILIES[category].sample(rng)


def demonstrate(prompt: str, rng: random.Random) -> str:
  """The response a careful labeler writes for `prompt` (raises ValueError for a foreign prompt)."""
  family, fields = _parse_or_raise(prompt)
  return family.demonstrate(fields, rng)


def wrong_answer(prompt: str, demonstration: str, rng: random.Random) -> str:
  """A fluent response to `prompt` that gets the task wrong (for labeler calibration and tests)."""
  family, fields = _parse_or_raise(prompt)
  return family.wrong(fields, demonstration, rng)


@functools.lru_cache(maxsize=200_000)
def judge(prompt: str, response: str) -> Judgment:
  """Judges `response` to `prompt` from their text alone.

  A prompt that is not a task of this world gets a judgment with category '' that fails the
  instruction (nothing can be checked).
  """
  parsed = parse(prompt)
  if parsed is None:
    return finish('', prompt, response, {'follows': False, 'target': 8})
  family, fields = parsed
  return finish(family.name, prompt, response, family.assess(fields, normalize(prompt), response))


def _parse_or_raise(prompt: str) -> tuple[Family, dict]:
  parsed = parse(prompt)
  if parsed is None:
    raise ValueError(f'not a prompt of the InstructGPT-mini world: {prompt!r}')
  return parsed
