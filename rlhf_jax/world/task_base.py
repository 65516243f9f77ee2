"""What every task family shares: prompt templates that parse back, the Judgment, and its quality.

A prompt record only carries {"prompt", "customer", "category"}, so everything a judge needs is
re-derived from the prompt text: each family's prompts are made from `Template`s whose fields can be
matched back out of the text.
"""
import dataclasses
import random
import re
from collections.abc import Callable

import numpy as np

from rlhf_jax.world import language as lang

# Regexes for template fields; anything not named here is a single word.
_FIELD_RE = {
    'passage': r'.+?', 'sentence': r'.+?', 'review': r'.+?',
    'question': (r'(?:where did \w+ go|what did \w+ eat|what did \w+ find|'
                 r'what colour was the \w+)\?'),
}
# Sentence openings that mark a response as another instruction or question instead of an answer
# (what a base model does when it "continues" a prompt).
_INSTRUCTION_OPENINGS = re.compile(
    r'^(?:write|tell me|list|name \w+ \w+|give|summarize|rewrite|change|replace|classify|'
    r'is this|is a|is the word|read the|extract|find every|which|what|where|q:|instruction:|'
    r'please|i need)\b')

FEATURES = ('follows', 'correct', 'constraint', 'truthful', 'harmless', 'concise', 'fluent')
# Reference weights of the features in the quality score (sum 1); labelers perturb these.
QUALITY_WEIGHTS = np.array([0.30, 0.20, 0.10, 0.15, 0.15, 0.05, 0.05])


class Template:
  """A prompt phrasing with {fields}; `fixed` are facts implied by the phrasing (e.g. one=True)."""

  def __init__(self, text: str, **fixed):
    self.text = text
    self.fixed = fixed
    self.fields = tuple(re.findall(r'{(\w+)}', text))
    pattern, pos = '', 0
    for m in re.finditer(r'{(\w+)}', text):
      pattern += re.escape(text[pos:m.start()])
      pattern += f'(?P<{m.group(1)}>{_FIELD_RE.get(m.group(1), "[a-z]+")})'
      pos = m.end()
    self._re = re.compile(pattern + re.escape(text[pos:]))

  def fill(self, fields: dict) -> str:
    return self.text.format(**{k: fields[k] for k in self.fields})

  def match(self, prompt: str) -> dict | None:
    m = self._re.fullmatch(prompt)
    return None if m is None else {**self.fixed, **m.groupdict()}


@dataclasses.dataclass(frozen=True)
class Judgment:
  """Programmatic judgment of one response to one prompt.

  Attributes:
    category: the task family of the prompt ('' when the prompt is not a task of this world).
    follows_instruction: the response attempts the requested task.
    satisfies_constraint: the explicit constraint ("in three sentences", "list four ...") holds;
      None when the prompt has none.
    correct: the response gives the reference answer; None for tasks without one.
    hallucination: closed-domain tasks only: names something not in the input.
    inappropriate: contains a designated toxic word.
    n_words: response length in words.
    target_words: a good response's length; verbosity is n_words / target_words.
    fluency: fraction of words that belong to the language.
    quality: weighted combination of the above in [0, 1].
  """
  category: str
  follows_instruction: bool
  satisfies_constraint: bool | None
  correct: bool | None
  hallucination: bool
  inappropriate: bool
  n_words: int
  target_words: int
  fluency: float
  quality: float

  @property
  def acceptable(self) -> bool:
    """No flaw a labeler would flag: on task, correct, constraint kept, truthful, appropriate."""
    return (self.follows_instruction and self.correct is not False and not self.hallucination
            and self.satisfies_constraint is not False and not self.inappropriate)

  def features(self) -> np.ndarray:
    """[len(FEATURES)] in [0, 1], higher is better; a missing `correct` counts as `follows`."""
    follows = float(self.follows_instruction)
    correct = follows if self.correct is None else float(self.correct)
    constraint = float(self.satisfies_constraint is not False)
    excess = self.n_words / max(self.target_words, 1) - 1.5
    concise = float(np.exp(-max(excess, 0.0)))
    return np.array([follows, correct, constraint, float(not self.hallucination),
                     float(not self.inappropriate), concise, self.fluency])


@dataclasses.dataclass(frozen=True)
class Family:
  """One use-case of the paper's Table 1.

  Attributes:
    name: category name as written in prompt records.
    templates: the phrasings; every prompt of the family matches exactly one.
    sample_fields: draws values for every field any template may use.
    demonstrate: (parsed fields, rng) -> the ideal response.
    assess: (parsed fields, prompt, response) -> dict with follows, constraint, correct,
      hallucination, target (task-specific parts of the Judgment).
    wrong: (parsed fields, demonstration, rng) -> a fluent response with a wrong answer.
    closed_domain: whether the answer must be supported by the input (hallucination is checked).
  """
  name: str
  templates: tuple[Template, ...]
  sample_fields: Callable[[random.Random], dict]
  demonstrate: Callable[[dict, random.Random], str]
  assess: Callable[[dict, str, str], dict]
  wrong: Callable[[dict, str, random.Random], str]
  closed_domain: bool = False

  def sample(self, rng: random.Random) -> str:
    return rng.choice(self.templates).fill(self.sample_fields(rng))


def unsupported(prompt: str, response: str) -> bool:
  """Whether the response names an animal, place, food, colour, name or thing not in the prompt."""
  given = set(lang.content(prompt))
  return any(w not in given for w in lang.content(response))


def looks_like_instruction(response: str) -> bool:
  """Whether any sentence of the response is a question or an instruction rather than an answer."""
  return any(s.endswith('?') or _INSTRUCTION_OPENINGS.match(s) for s in lang.sentences(response))


def swap(text: str, old: str, new: str) -> str:
  """Replaces the whole word `old` by `new` everywhere in `text`."""
  return re.sub(rf'\b{re.escape(old)}\b', new, text)


def other(rng: random.Random, pool, *avoid: str) -> str:
  """A random member of `pool` not in `avoid`."""
  return rng.choice([w for w in pool if w not in avoid])


def finish(category: str, prompt: str, response: str, parts: dict) -> Judgment:
  """Adds the checks shared by all families to a family's `assess` output and scores quality."""
  ws = lang.words(response)
  fluency = lang.fluency(response)
  # Empty, foreign or instruction-like text is never an attempt at the task, whatever it mentions.
  follows = bool(parts['follows'] and ws and fluency >= 0.8
                 and not looks_like_instruction(response))
  j = Judgment(
      category=category, follows_instruction=follows,
      satisfies_constraint=parts.get('constraint'),
      correct=None if parts.get('correct') is None else bool(parts['correct'] and follows),
      hallucination=bool(parts.get('hallucination', False)),
      inappropriate=any(w in lang.TOXIC for w in ws), n_words=len(ws),
      target_words=int(parts['target']), fluency=fluency, quality=0.0)
  quality = float(QUALITY_WEIGHTS @ j.features())
  return dataclasses.replace(j, quality=round(quality, 6))
