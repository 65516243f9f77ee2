"""Closed-domain task families: rewrite, summarization, classification, closed QA, extraction.

The answer must come from the text in the prompt; naming anything that is not there is a
hallucination (the paper's closed-domain hallucination metadata).
"""
import random
import re

from rlhf_jax.world import language as lang
from rlhf_jax.world.task_base import Family, Template, other, swap, unsupported

T = Template


def _closed(parts: dict, prompt: str, response: str) -> dict:
  return {**parts, 'hallucination': unsupported(prompt, response)}


# --- rewrite --------------------------------------------------------------------------------------

_REWRITE = (
    T('rewrite this sentence in the past tense: {sentence}', op='past'),
    T('change this sentence to the past tense: {sentence}', op='past'),
    T('rewrite this sentence so it is about {new} instead of {old}: {sentence}', op='swap'),
    T('replace {old} with {new} in this sentence: {sentence}', op='swap'),
)


def _rewrite_fields(rng: random.Random) -> dict:
  name, animal, place = rng.choice(lang.NAMES), rng.choice(lang.ANIMALS), rng.choice(lang.PLACES)
  verb = rng.choice(lang.MOTION_VERBS)
  if rng.random() < 0.5:
    sentence = (f'{name} {verb} to the {place} and {rng.choice(["sees", "finds"])} a '
                f'{rng.choice(lang.COLOURS)} {animal}.')
  else:
    rest = rng.choice(['sings', 'sleeps'])
    sentence = f'the {animal} {verb} in the {place} and {rest} with {name}.'
  return {'sentence': sentence, 'old': name, 'new': other(rng, lang.NAMES, name)}


def _rewritten(f: dict) -> str:
  if f['op'] == 'swap':
    return swap(f['sentence'], f['old'], f['new'])
  return ' '.join(lang.PAST.get(w, w) for w in f['sentence'].split(' '))


def _rewrite_assess(f: dict, prompt: str, response: str) -> dict:
  expected, got = lang.words(_rewritten(f)), lang.words(response)
  common = sum(min(expected.count(w), got.count(w)) for w in set(got))
  f1 = 2 * common / (len(expected) + len(got)) if got else 0.0
  if f['op'] == 'swap':
    applied = f['new'] in got and f['old'] not in got
  else:
    applied = not set(got) & set(lang.PAST) and bool(set(got) & set(lang.PAST.values()))
  return _closed({'follows': applied and f1 >= 0.6, 'correct': got == expected,
                  'target': len(expected)}, prompt, response)


def _rewrite_wrong(f: dict, demo: str, rng: random.Random) -> str:
  # Two words of the sentence trade places: wrong, yet nothing made up.
  a, b = rng.sample(sorted({w for w in lang.content(demo) if lang.CATEGORY_OF[w] != 'name'}), 2)
  return re.sub(rf'\b({a}|{b})\b', lambda m: b if m.group(1) == a else a, demo)


REWRITE = Family('rewrite', _REWRITE, _rewrite_fields, lambda f, rng: _rewritten(f),
                 _rewrite_assess, _rewrite_wrong, closed_domain=True)

# --- summarization --------------------------------------------------------------------------------

_SUMMARIZATION = (
    T('summarize this story: {passage}'),
    T('summarize this in one sentence: {passage}', one=True),
    T('{passage} tl;dr:'),
    T('give a short summary of this text in {n} words or less: {passage}'),
)


def _summary_fields(rng: random.Random) -> dict:
  name, animal, place = rng.choice(lang.NAMES), rng.choice(lang.ANIMALS), rng.choice(lang.PLACES)
  food1, food2 = rng.sample(lang.FOODS, 2)
  adj1, adj2 = rng.sample(lang.ADJECTIVES, 2)
  more = [f'they ate {food1} and {food2}.', f'the {animal} was {adj1} and {name} was {adj2}.',
          'then it began to rain and they went home.',
          f'{name} found a {rng.choice(lang.COLOURS)} {rng.choice(lang.THINGS)} near the {place}.']
  first = f'{name} went to the {place} with a {rng.choice(lang.COLOURS)} {animal}.'
  passage = ' '.join([first] + rng.sample(more, rng.randint(2, 3)))
  return {'passage': passage, 'n': lang.number_word(rng.randint(8, 10))}


def _summary_subjects(passage: str) -> tuple[str, str, str]:
  return tuple(lang.of_category(passage, c)[0] for c in ('name', 'animal', 'place'))


def _summary_demo(f: dict, rng: random.Random) -> str:
  name, animal, place = _summary_subjects(f['passage'])
  return rng.choice([f'{name} went to the {place} with a {animal}.',
                     f'{name} and a {animal} went to the {place}.'])


def _summary_assess(f: dict, prompt: str, response: str) -> dict:
  name, animal, _ = _summary_subjects(f['passage'])
  got = lang.words(response)
  short = len(got) < 0.6 * len(lang.words(f['passage']))
  if f.get('one'):
    constraint = len(lang.sentences(response)) == 1
  else:
    constraint = len(got) <= lang.NUMBER_VALUE[f['n']] if 'n' in f else None
  return _closed({'follows': name in got and animal in got and short, 'constraint': constraint,
                  'target': 9}, prompt, response)


def _summary_wrong(f: dict, demo: str, rng: random.Random) -> str:
  name = _summary_subjects(f['passage'])[0]
  return swap(demo, name, other(rng, lang.NAMES, name))


SUMMARIZATION = Family('summarization', _SUMMARIZATION, _summary_fields, _summary_demo,
                       _summary_assess, _summary_wrong, closed_domain=True)

# --- classification -------------------------------------------------------------------------------

_CLASSIFICATION = (
    T('is this review positive or negative? {review}', task='sentiment'),
    T('classify the sentiment of this review as positive or negative: {review}', task='sentiment'),
    T('{review} was this review positive or negative? answer in one word.', task='sentiment',
      one=True),
    T('is a {item} an animal, a food or a colour?', task='kind'),
    T('is the word {item} an animal, a food or a colour? answer in one word.', task='kind',
      one=True),
)
_LABELS = {'sentiment': ('positive', 'negative'), 'kind': ('animal', 'food', 'colour')}


def _classification_fields(rng: random.Random) -> dict:
  good = rng.random() < 0.5
  s1, s2 = rng.sample(lang.POSITIVE if good else lang.NEGATIVE, 2)
  food, place = rng.choice(lang.FOODS), rng.choice(lang.PLACES)
  review = rng.choice([f'the {food} at the cafe was {s1} and the staff were {s2}.',
                       f'i went to the {place} and it was {s1}. the {food} was {s2}.'])
  item = rng.choice(lang.ANIMALS + lang.FOODS + lang.COLOURS)
  return {'review': review, 'item': item}


def _label(f: dict) -> str:
  if f['task'] == 'kind':
    return lang.CATEGORY_OF[f['item']]
  ws = lang.words(f['review'])
  good = sum(w in lang.POSITIVE for w in ws) > sum(w in lang.NEGATIVE for w in ws)
  return 'positive' if good else 'negative'


def _classification_demo(f: dict, rng: random.Random) -> str:
  label = _label(f)
  if f.get('one'):
    return f'{label}.'
  if f['task'] == 'kind':
    return f'a {f["item"]} is {"an" if label == "animal" else "a"} {label}.'
  return rng.choice([f'{label}.', f'it is {label}.', f'the review is {label}.'])


def _classification_assess(f: dict, prompt: str, response: str) -> dict:
  said = {w for w in lang.words(response) if w in _LABELS[f['task']]}
  return _closed({'follows': bool(said), 'correct': said == {_label(f)},
                  'constraint': len(lang.words(response)) == 1 if f.get('one') else None,
                  'target': 1 if f.get('one') else 4}, prompt, response)


def _classification_wrong(f: dict, demo: str, rng: random.Random) -> str:
  label = _label(f)
  return re.sub(rf'\ban? {label}\b|\b{label}\b', other(rng, _LABELS[f['task']], label), demo)


CLASSIFICATION = Family('classification', _CLASSIFICATION, _classification_fields,
                        _classification_demo, _classification_assess, _classification_wrong,
                        closed_domain=True)

# --- closed QA ------------------------------------------------------------------------------------

_CLOSED_QA = (
    T('read the text and answer the question. text: {passage} question: {question}'),
    T('{passage} answer this question: {question}'),
    T('{passage} {question} answer in one word.', one=True),
)
# Question -> (regex on the passage giving the answer, answer sentence).
_QUESTIONS = {
    r'where did (\w+) go\?': (r'\b{0} went to the (\w+)', '{0} went to the {1}.'),
    r'what did (\w+) eat\?': (r'\b{0} ate some (\w+)', '{0} ate {1}.'),
    r'what did (\w+) find\?': (r'\b{0} found a \w+ (\w+)', '{0} found a {1}.'),
    r'what colour was the (\w+)\?': (r'\bthe {0} was (\w+)|\ba (\w+) {0}\b', 'the {0} was {1}.'),
}


def _closed_qa_fields(rng: random.Random) -> dict:
  name, animal, place = rng.choice(lang.NAMES), rng.choice(lang.ANIMALS), rng.choice(lang.PLACES)
  # Colours drawn independently of the knowledge base: the text, not memory, holds the answer.
  colour1, colour2 = rng.sample(lang.COLOURS, 2)
  thing = rng.choice(lang.THINGS)
  passage = (f'{name} went to the {place} with a {animal}. the {animal} was {colour1}. '
             f'{name} ate some {rng.choice(lang.FOODS)} and {name} found a {colour2} {thing}.')
  question = rng.choice([f'where did {name} go?', f'what did {name} eat?',
                         f'what did {name} find?', f'what colour was the {animal}?',
                         f'what colour was the {thing}?'])
  return {'passage': passage, 'question': question}


def _closed_qa_answer(f: dict) -> tuple[str, str]:
  """(answer word, answer sentence) read off the passage."""
  for question_re, (answer_re, sentence) in _QUESTIONS.items():
    m = re.fullmatch(question_re, f['question'])
    if m:
      subject = m.group(1)
      found = re.search(answer_re.format(subject), f['passage'])
      answer = next(g for g in found.groups() if g)
      return answer, sentence.format(subject, answer)
  raise ValueError(f'closed_qa: unknown question {f["question"]!r}')


def _closed_qa_demo(f: dict, rng: random.Random) -> str:
  answer, sentence = _closed_qa_answer(f)
  return f'{answer}.' if f.get('one') else sentence


def _closed_qa_assess(f: dict, prompt: str, response: str) -> dict:
  answer, _ = _closed_qa_answer(f)
  said = lang.unique(lang.of_category(response, lang.CATEGORY_OF[answer]))
  return _closed({'follows': bool(said), 'correct': said == [answer],
                  'constraint': len(lang.words(response)) == 1 if f.get('one') else None,
                  'target': 1 if f.get('one') else 5}, prompt, response)


def _closed_qa_wrong(f: dict, demo: str, rng: random.Random) -> str:
  answer, _ = _closed_qa_answer(f)
  category = lang.CATEGORY_OF[answer]
  in_text = [w for w in lang.of_category(f['passage'], category) if w != answer]
  return swap(demo, answer, rng.choice(in_text) if in_text else
              other(rng, lang.CATEGORIES[category], answer))


CLOSED_QA = Family('closed_qa', _CLOSED_QA, _closed_qa_fields, _closed_qa_demo,
                   _closed_qa_assess, _closed_qa_wrong, closed_domain=True)

# --- extraction -----------------------------------------------------------------------------------

_EXTRACTION = (
    T('list all the animals in this text: {passage}', kind='animals'),
    T('extract the {kind} from this text: {passage}'),
    T('{passage} which {kind} are mentioned in the text?'),
    T('find every name in this text: {passage}', kind='names'),
)


def _extraction_fields(rng: random.Random) -> dict:
  names = rng.sample(lang.NAMES, rng.randint(1, 2))
  animals = rng.sample(lang.ANIMALS, rng.randint(1, 3))
  foods = rng.sample(lang.FOODS, rng.randint(1, 2))
  colours = rng.sample(lang.COLOURS, len(animals))
  seen = lang.join_list([f'a {c} {a}' if i < 2 else f'a {a}'
                         for i, (c, a) in enumerate(zip(colours, animals))])
  passage = (f'{lang.join_list(names)} saw {seen} near the {rng.choice(lang.PLACES)}. '
             f'they shared {lang.join_list(foods)}.')
  return {'passage': passage, 'kind': rng.choice(['animals', 'foods', 'colours', 'names'])}


def _extracted(f: dict) -> list[str]:
  return lang.unique(lang.of_category(f['passage'], lang.KINDS[f['kind']]))


def _extraction_assess(f: dict, prompt: str, response: str) -> dict:
  category = lang.KINDS[f['kind']]
  got = lang.unique(lang.of_category(response, category))
  others = [w for w in lang.content(response) if lang.CATEGORY_OF[w] != category]
  expected = _extracted(f)
  return _closed({'follows': bool(got) and not others, 'correct': set(got) == set(expected),
                  'target': 2 * len(expected) + 1}, prompt, response)


def _extraction_wrong(f: dict, demo: str, rng: random.Random) -> str:
  # One item left out, or the only one swapped for another of its kind from the text's world.
  items = _extracted(f)
  if len(items) > 1:
    return lang.join_list(items[:-1]) + '.'
  return swap(demo, items[0], other(rng, lang.CATEGORIES[lang.KINDS[f['kind']]], items[0]))


EXTRACTION = Family('extraction', _EXTRACTION, _extraction_fields,
                    lambda f, rng: lang.join_list(_extracted(f)) + '.', _extraction_assess,
                    _extraction_wrong, closed_domain=True)
