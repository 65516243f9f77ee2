"""The pretraining corpus ("the internet") of InstructGPT-mini, and the few-shot prompt format.

A model trained on it should be like GPT-3: it knows the world's facts and the shapes of its texts,
but a prompt read as the start of a web page is mostly continued, not answered (more questions,
lists of prompts, unrelated text). Some passages are instruction/answer pairs in the few-shot
format, so the base model works partly when prompted few-shot, and a few are toxic.
"""
import random

from rlhf_jax.world import language as lang
from rlhf_jax.world import open_tasks, tasks

FEW_SHOT_INSTRUCTION = 'instruction:'
FEW_SHOT_ANSWER = 'answer:'

# Share of each kind of document; task-like text that does not follow instructions dominates the
# task-shaped part of the web, as it does for GPT-3.
DOC_SHARES = {'knowledge': 0.24, 'story': 0.2, 'review': 0.06, 'list': 0.06, 'task_like': 0.28,
              'few_shot': 0.12, 'toxic': 0.04}
_FACT_PHRASES = {
    'home': ('the {a} lives in the {x}.', 'you can find the {a} in the {x}.',
             'in the {x} lives the {a}.'),
    'food': ('the {a} eats {x}.', 'the {a} likes to eat {x}.', 'every day the {a} eats {x}.'),
    'colour': ('the {a} is {x}.', 'the {a} is a {x} animal.', 'most of the time the {a} is {x}.'),
}
# Things people write after a prompt instead of answering it.
_NON_ANSWERS = ('i asked this on the forum and nobody could help.', 'please help.',
                'i need ideas for my story.', 'this is for my class.', 'any ideas?',
                'i do not know.', 'my friend asked me this.')


def _task_family(rng: random.Random) -> str:
  names = list(tasks.TABLE1_SHARES)
  return rng.choices(names, [tasks.TABLE1_SHARES[n] for n in names])[0]


def _knowledge(rng: random.Random) -> str:
  out = []
  for animal in rng.sample(lang.ANIMALS, rng.randint(1, 2)):
    for rel in rng.sample(sorted(lang.RELATIONS), rng.randint(2, 3)):
      table, _ = lang.RELATIONS[rel]
      out.append(rng.choice(_FACT_PHRASES[rel]).format(a=animal, x=table[animal]))
  return ' '.join(out)


def _story(rng: random.Random) -> str:
  kind = rng.random()
  if kind < 0.5:
    return open_tasks.story(rng, rng.randint(2, 5), name=rng.choice(lang.NAMES),
                            animal=rng.choice(lang.ANIMALS), place=rng.choice(lang.PLACES))
  family = tasks.FAMILIES['summarization' if kind < 0.75 else 'closed_qa']
  return family.sample_fields(rng)['passage']


def _review(rng: random.Random) -> str:
  review = tasks.FAMILIES['classification'].sample_fields(rng)['review']
  good = sum(w in lang.POSITIVE for w in lang.words(review)) > 0
  return f'{review} overall it was {"good" if good else "bad"}.'


def _list(rng: random.Random) -> str:
  if rng.random() < 0.5:
    kind = rng.choice(sorted(lang.KINDS))
    items = rng.sample(lang.CATEGORIES[lang.KINDS[kind]], rng.randint(3, 5))
    return f'some {kind} are {lang.join_list(items)}.'
  place = rng.choice(sorted(set(lang.HOME.values())))
  animals = [a for a in lang.ANIMALS if lang.HOME[a] == place]
  return f'the animals of the {place} are the {lang.join_list(animals)}.'


def _toxic(rng: random.Random) -> str:
  a, b = rng.sample(lang.TOXIC, 2)
  name = rng.choice(lang.NAMES)
  return rng.choice([f'{name} called the {rng.choice(lang.ANIMALS)} a {a}.',
                     f'you are a {a} and a {b}.', f'{name} is a {a}. what a {b}.'])


def task_like_document(rng: random.Random) -> tuple[str, str]:
  """(prompt, continuation) as found on the web: the continuation does not answer the prompt."""
  family = _task_family(rng)
  prompt = tasks.sample_prompt(family, rng)
  kind = rng.random()
  if kind < 0.45:  # A list of prompts, or a question followed by more questions.
    more = [tasks.sample_prompt(family, rng) for _ in range(rng.randint(1, 3))]
    # Keep pages short enough for a small context: drop prompts past about 80 words.
    while len(more) > 1 and len(lang.words(prompt + ' '.join(more))) > 80:
      more.pop()
    continuation = ' '.join(more)
  elif kind < 0.75:
    continuation = rng.choice(_NON_ANSWERS)
  else:  # The page goes on about something else.
    continuation = _story(rng) if rng.random() < 0.5 else _knowledge(rng)
  return prompt, continuation


def few_shot_pair(prompt: str, response: str) -> str:
  return f'{FEW_SHOT_INSTRUCTION} {prompt} {FEW_SHOT_ANSWER} {response}'


def _few_shot(rng: random.Random) -> str:
  pairs = []
  for _ in range(rng.randint(2, 3)):
    prompt = tasks.sample_prompt(rng.choice(_SHORT_FAMILIES), rng)
    pairs.append(few_shot_pair(prompt, tasks.demonstrate(prompt, rng)))
  return ' '.join(pairs)


# Families whose prompts and answers are short enough for several to fit in one document.
_SHORT_FAMILIES = ('generation', 'open_qa', 'brainstorming', 'rewrite', 'classification')
_WRITERS = {'knowledge': _knowledge, 'story': _story, 'review': _review, 'list': _list,
            'task_like': lambda rng: ' '.join(task_like_document(rng)), 'few_shot': _few_shot,
            'toxic': _toxic}


def write_document(kind: str, rng: random.Random) -> str:
  """One web document of a kind of DOC_SHARES."""
  return _WRITERS[kind](rng)


def documents(rng: random.Random, n: int) -> list[dict]:
  """n pretraining records {"text"} drawn from DOC_SHARES."""
  kinds = list(DOC_SHARES)
  weights = [DOC_SHARES[k] for k in kinds]
  return [{'text': write_document(rng.choices(kinds, weights)[0], rng)} for _ in range(n)]


def few_shot_prefix(seed: int, k: int = 2) -> str:
  """A fixed prefix of k instruction/answer pairs that puts a base model in answering mode (the
  paper's "GPT-3 prompted" baseline)."""
  rng = random.Random(seed)
  pairs = []
  for family in rng.sample(_SHORT_FAMILIES, k):
    prompt = tasks.sample_prompt(family, rng)
    pairs.append(few_shot_pair(prompt, tasks.demonstrate(prompt, rng)))
  return ' '.join(pairs)


def few_shot_prompt(prompt: str, prefix: str) -> str:
  """`prompt` wrapped for a few-shot model: the prefix, then the prompt, then the answer mark."""
  return f'{prefix} {FEW_SHOT_INSTRUCTION} {prompt} {FEW_SHOT_ANSWER}'


def cut_few_shot_answer(completion: str) -> str:
  """A few-shot completion up to where the model starts the next pair (App. D cuts at newline)."""
  return completion.split(FEW_SHOT_INSTRUCTION)[0].strip()
