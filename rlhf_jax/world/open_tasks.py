"""Open-domain task families: generation, open QA and brainstorming (paper Table 1).

Open-domain answers may bring in new content, so hallucination is not checked here (as in the
paper, which measures it on closed-domain tasks only); a wrong fact is `correct=False`.
"""
import random

from rlhf_jax.world import language as lang
from rlhf_jax.world.task_base import Family, Template, other, swap

T = Template

# --- generation -----------------------------------------------------------------------------------

_GENERATION = (
    T('write a story about {name} and the {animal}.'),
    T('write a story about {name} and the {animal} in {n} sentences.'),
    T('tell me a short story about a {adj} {animal}.'),
    T('tell me a story about a {adj} {animal} in {n} sentences.'),
    T('write {n} sentences about {name} at the {place}.'),
    T('please write a short story where {name} meets a {animal} at the {place}.'),
)


def _story_fields(rng: random.Random) -> dict:
  return {'name': rng.choice(lang.NAMES), 'animal': rng.choice(lang.ANIMALS),
          'adj': rng.choice(lang.ADJECTIVES), 'place': rng.choice(lang.PLACES),
          'n': lang.number_word(rng.randint(2, 5))}


def story(rng: random.Random, n: int, name: str | None = None, animal: str | None = None,
          place: str | None = None, adj: str | None = None) -> str:
  """An n-sentence story whose first sentence names every given subject."""
  name_given, animal_given = name is not None, animal is not None
  name = name or rng.choice(lang.NAMES)
  animal = animal or rng.choice(lang.ANIMALS)
  place = place or rng.choice(lang.PLACES)
  adj = adj or rng.choice(lang.ADJECTIVES)
  if not animal_given:
    first = f'{name} went to the {place}.'
  elif name_given:
    first = f'{name} met a {adj} {animal} at the {place}.'
  else:
    first = f'once there was a {adj} {animal}.'
  rest = [f'the {animal} was {rng.choice(lang.ADJECTIVES)}.',
          f'{name} gave the {animal} some {rng.choice(lang.FOODS)}.',
          f'they played by the {place} all day.',
          f'{name} and the {animal} became friends.',
          f'then {name} went home.',
          f'the {animal} found a {rng.choice(lang.COLOURS)} {rng.choice(lang.THINGS)}.']
  if not animal_given:
    rest[0] = f'{name} saw a {adj} {animal} there.'
  return ' '.join([first] + rng.sample(rest, n - 1))


def _generation_demo(f: dict, rng: random.Random) -> str:
  n = lang.NUMBER_VALUE[f['n']] if 'n' in f else rng.randint(2, 4)
  return story(rng, n, name=f.get('name'), animal=f.get('animal'), place=f.get('place'),
               adj=f.get('adj'))


def _generation_assess(f: dict, prompt: str, response: str) -> dict:
  ws = set(lang.words(response))
  subjects = [f[k] for k in ('name', 'animal', 'place', 'adj') if k in f]
  n = lang.NUMBER_VALUE.get(f.get('n'))
  count = len(lang.sentences(response))
  return {'follows': all(s in ws for s in subjects) and count >= 1,
          'constraint': None if n is None else count == n, 'target': 8 * (n or 3)}


def _generation_wrong(f: dict, demo: str, rng: random.Random) -> str:
  key = f.get('animal', f.get('name'))
  pool = lang.ANIMALS if 'animal' in f else lang.NAMES
  return swap(demo, key, other(rng, pool, key))


GENERATION = Family('generation', _GENERATION, _story_fields, _generation_demo,
                    _generation_assess, _generation_wrong)

# --- open QA --------------------------------------------------------------------------------------

_OPEN_QA = (
    T('where does the {animal} live?', rel='home'),
    T('what does the {animal} eat?', rel='food'),
    T('what colour is the {animal}?', rel='colour'),
    T('where does the {animal} live? answer in one word.', rel='home', one=True),
    T('what does the {animal} eat? answer in one word.', rel='food', one=True),
    T('q: what colour is the {animal}? a:', rel='colour'),
    T('tell me where the {animal} lives.', rel='home'),
    T('tell me what colour the {animal} is.', rel='colour'),
)
_FACT_SENTENCES = {'home': ('the {a} lives in the {x}.', 'it lives in the {x}.'),
                   'food': ('the {a} eats {x}.', 'it eats {x}.'),
                   'colour': ('the {a} is {x}.', 'it is {x}.')}


def _open_qa_demo(f: dict, rng: random.Random) -> str:
  table, _ = lang.RELATIONS[f['rel']]
  answer = table[f['animal']]
  if f.get('one'):
    return f'{answer}.'
  return rng.choice(_FACT_SENTENCES[f['rel']]).format(a=f['animal'], x=answer)


def _open_qa_assess(f: dict, prompt: str, response: str) -> dict:
  table, category = lang.RELATIONS[f['rel']]
  said = lang.unique(lang.of_category(response, category))
  animals = set(lang.of_category(response, 'animal'))
  n = len(lang.words(response))
  # An answer about another animal is not an answer to this question.
  return {'follows': bool(said) and animals <= {f['animal']},
          'correct': said == [table[f['animal']]],
          'constraint': (n == 1) if f.get('one') else None, 'target': 1 if f.get('one') else 6}


def _open_qa_wrong(f: dict, demo: str, rng: random.Random) -> str:
  table, category = lang.RELATIONS[f['rel']]
  answer = table[f['animal']]
  return swap(demo, answer, other(rng, lang.CATEGORIES[category], answer))


OPEN_QA = Family('open_qa', _OPEN_QA, lambda rng: {'animal': rng.choice(lang.ANIMALS)},
                 _open_qa_demo, _open_qa_assess, _open_qa_wrong)

# --- brainstorming --------------------------------------------------------------------------------

_BRAINSTORMING = (
    T('list {n} {kind}.'),
    T('name {n} {kind}.'),
    T('give me {n} ideas for {kind} to use in a story.'),
    T('what are some {kind} that a {animal} might like?'),
    T('i need ideas for a party. list {n} {kind}.'),
)


def _brainstorm_fields(rng: random.Random) -> dict:
  return {'n': lang.number_word(rng.randint(3, 5)), 'kind': rng.choice(sorted(lang.KINDS)),
          'animal': rng.choice(lang.ANIMALS)}


def _brainstorm_demo(f: dict, rng: random.Random) -> str:
  n = lang.NUMBER_VALUE[f['n']] if 'n' in f else rng.randint(3, 4)
  pool = [w for w in lang.CATEGORIES[lang.KINDS[f['kind']]] if w != f.get('animal')]
  return lang.join_list(rng.sample(pool, n)) + '.'


def _brainstorm_assess(f: dict, prompt: str, response: str) -> dict:
  category = lang.KINDS[f['kind']]
  items = [w for w in lang.content(response) if w != f.get('animal')]
  right = [w for w in items if lang.CATEGORY_OF[w] == category]
  n = lang.NUMBER_VALUE.get(f.get('n'))
  return {'follows': len(right) >= 2 and len(right) >= 0.75 * len(items),
          'constraint': None if n is None else len(right) == n == len(set(right)),
          'target': 2 * (n or 3) + 1}


def _brainstorm_wrong(f: dict, demo: str, rng: random.Random) -> str:
  wrong_kind = other(rng, sorted(lang.CATEGORIES), lang.KINDS[f['kind']])
  n = len(lang.content(demo))
  return lang.join_list(rng.sample(lang.CATEGORIES[wrong_kind], n)) + '.'


BRAINSTORMING = Family('brainstorming', _BRAINSTORMING, _brainstorm_fields, _brainstorm_demo,
                       _brainstorm_assess, _brainstorm_wrong)
