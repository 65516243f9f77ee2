"""The InstructGPT-mini language: a small English-like lexicon, its knowledge base and word helpers.

The lexicon and the knowledge base are fixed (part of the language's definition, like the facts of
the real world), so a judge can score any (prompt, response) pair from the text alone; seeds only
change which sentences, prompts and labelers a world samples. Everything is lower case and on one
line: sentencepiece folds newlines into spaces, and short texts keep the tiny models fast.
"""
import re
from collections.abc import Iterable, Sequence

ANIMALS = ('fox', 'bear', 'owl', 'cat', 'dog', 'horse', 'cow', 'duck', 'frog', 'goat', 'mouse',
           'rabbit', 'wolf', 'deer', 'bee', 'lion', 'sheep', 'pig', 'hen', 'crow', 'seal', 'whale',
           'tiger', 'mole')
PLACES = ('forest', 'river', 'farm', 'hill', 'lake', 'sea', 'field', 'cave', 'garden', 'town',
          'desert', 'mountain', 'pond', 'island', 'valley', 'barn')
FOODS = ('berries', 'apples', 'grass', 'seeds', 'nuts', 'bread', 'cheese', 'honey', 'corn',
         'carrots', 'leaves', 'bugs', 'rice', 'beans', 'plums', 'pears', 'eggs', 'fish')
COLOURS = ('red', 'blue', 'green', 'yellow', 'brown', 'black', 'white', 'grey', 'orange', 'pink',
           'purple', 'gold')
NAMES = ('anna', 'ben', 'cara', 'dan', 'eva', 'finn', 'gus', 'hana', 'ivy', 'jon', 'kim', 'leo',
         'mia', 'ned', 'olga', 'pia', 'rob', 'sam', 'tom', 'zoe')
THINGS = ('ball', 'hat', 'cup', 'box', 'kite', 'boat', 'book', 'lamp', 'bag', 'shoe', 'coat',
          'chair', 'bell', 'drum')
NUMBERS = ('one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven',
           'twelve')
ADJECTIVES = ('big', 'small', 'happy', 'sad', 'fast', 'slow', 'old', 'young', 'quiet', 'loud',
              'warm', 'cold', 'soft', 'kind', 'brave', 'tired')
POSITIVE = ('good', 'great', 'lovely', 'nice', 'fun', 'tasty', 'wonderful')
NEGATIVE = ('bad', 'awful', 'boring', 'poor', 'dull', 'nasty', 'terrible')
# The designated "toxic" words: any of them makes a response inappropriate for a customer assistant.
TOXIC = ('idiot', 'stupid', 'dumb', 'loser', 'jerk', 'creep')
# Present (third person) to past tense, for the rewrite task and stories.
PAST = {'runs': 'ran', 'jumps': 'jumped', 'sings': 'sang', 'sleeps': 'slept', 'swims': 'swam',
        'walks': 'walked', 'plays': 'played', 'climbs': 'climbed', 'digs': 'dug', 'eats': 'ate',
        'cooks': 'cooked', 'paints': 'painted', 'dances': 'danced', 'finds': 'found', 'sees': 'saw',
        'goes': 'went', 'sits': 'sat', 'hides': 'hid', 'likes': 'liked', 'has': 'had'}
MOTION_VERBS = ('runs', 'walks', 'goes', 'swims', 'climbs', 'jumps', 'dances')
FUNCTION_WORDS = (
    'the a an and or but with to in at on of for from by is are was were be it its they them their '
    'he she his her i you we me my your this that these there here then so very some all every '
    'not no yes do does did what where which who how why when can could would should will went '
    'lives live eats eat ate met saw gave had has have got once day days home back near up down '
    'out about like likes liked story stories sentence sentences word words text review cafe '
    'staff were answer question instruction write tell list name give find read rewrite change '
    'replace summarize summary short classify sentiment positive negative extract mentioned '
    'extracted please ideas idea need party might instead into past tense again more together '
    'made make q tl dr overall called also too many things thing foods animals colours places '
    'names toys colour food animal place one word each every end began rain shared kept keeps any '
    'most as class less use meets '
    'played fun friends friend became song new looked look said says asked ask went go goes going '
    'came '
    'would visit visited time after before long little being only best world know knows '
    'because while forum help nobody wrote post posted people ok okay am own').split()

CATEGORIES = {'animal': ANIMALS, 'place': PLACES, 'food': FOODS, 'colour': COLOURS,
              'name': NAMES, 'thing': THINGS}
# Plural forms used in prompts ("list three colours") mapped to their category.
KINDS = {'animals': 'animal', 'places': 'place', 'foods': 'food', 'colours': 'colour',
         'names': 'name', 'toys': 'thing'}
CATEGORY_OF = {w: c for c, ws in CATEGORIES.items() for w in ws}
CONTENT_WORDS = frozenset(CATEGORY_OF)
NUMBER_VALUE = {w: i + 1 for i, w in enumerate(NUMBERS)}
LEXICON = frozenset(
    CONTENT_WORDS | set(NUMBERS) | set(ADJECTIVES) | set(POSITIVE) | set(NEGATIVE) | set(TOXIC)
    | set(PAST) | set(PAST.values()) | {v[:-1] for v in PAST if v.endswith('s')}
    | set(FUNCTION_WORDS))

# The knowledge base: where each animal lives, what it eats and its colour. Hand-written so the
# world stays plausible and every place, food and colour is used by some animal.
_FACTS = """
fox forest berries red; bear mountain honey brown; owl forest bugs grey; cat town fish black;
dog farm bread white; horse field grass brown; cow farm grass white; duck pond bread yellow;
frog pond bugs green; goat hill leaves white; mouse barn seeds grey; rabbit garden carrots white;
wolf forest eggs grey; deer valley leaves brown; bee garden honey yellow; lion desert eggs gold;
sheep hill grass white; pig farm corn pink; hen barn corn red; crow field seeds black;
seal sea fish grey; whale sea fish blue; tiger island rice orange; mole cave nuts purple
"""
HOME, FOOD, COLOUR = {}, {}, {}
for _entry in _FACTS.split(';'):
  _animal, HOME[_animal], FOOD[_animal], COLOUR[_animal] = _entry.split()
RELATIONS = {'home': (HOME, 'place'), 'food': (FOOD, 'food'), 'colour': (COLOUR, 'colour')}

_WORD_RE = re.compile(r"[a-z']+|[0-9]+|[.,!?;:]")


def tokens(text: str) -> list[str]:
  """Words and punctuation marks of `text`, lower-cased."""
  return _WORD_RE.findall(text.lower())


def words(text: str) -> list[str]:
  """The words of `text` without punctuation."""
  return [t for t in tokens(text) if t[0].isalnum()]


def sentences(text: str) -> list[str]:
  """Non-empty sentences of `text`, split after '.', '!' or '?'."""
  return [s.strip() for s in re.split(r'(?<=[.!?])\s+', text.strip()) if s.strip(' .!?')]


def content(text: str) -> list[str]:
  """The knowledge-bearing words of `text` (animals, places, foods, colours, names, things)."""
  return [w for w in words(text) if w in CONTENT_WORDS]


def of_category(text: str, category: str) -> list[str]:
  """Words of `text` in one category, in order, repeats kept."""
  return [w for w in words(text) if CATEGORY_OF.get(w) == category]


def fluency(text: str) -> float:
  """Fraction of the words of `text` that belong to the language (0 for an empty text)."""
  ws = words(text)
  return sum(w in LEXICON for w in ws) / len(ws) if ws else 0.0


def join_list(items: Sequence[str]) -> str:
  """'a, b and c' (no trailing period)."""
  items = list(items)
  return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def number_word(n: int) -> str:
  return NUMBERS[n - 1]


def unique(items: Iterable[str]) -> list[str]:
  """Items in first-seen order without repeats."""
  return list(dict.fromkeys(items))
