"""Pretraining corpus, few-shot format and public NLP evals of the InstructGPT-mini world."""
import collections
import random

from rlhf_jax.world import corpus, public_evals, tasks
from rlhf_jax.world import language as lang


def test_web_continuations_of_prompts_mostly_do_not_follow():
  rng = random.Random(0)
  judgments = [tasks.judge(*corpus.task_like_document(rng)) for _ in range(500)]
  assert sum(j.follows_instruction for j in judgments) / len(judgments) < 0.1
  assert sum(j.acceptable for j in judgments) / len(judgments) < 0.02


def test_corpus_is_mostly_not_instruction_following_but_has_few_shot_and_toxic_text():
  docs = [d['text'] for d in corpus.documents(random.Random(1), 3000)]
  few_shot = sum(d.startswith(corpus.FEW_SHOT_INSTRUCTION) for d in docs) / len(docs)
  toxic = sum(any(w in lang.TOXIC for w in lang.words(d)) for d in docs) / len(docs)
  assert 0.05 < few_shot < 0.2, few_shot
  assert 0.01 < toxic < 0.08, toxic
  assert all(lang.fluency(d) == 1.0 for d in docs)
  assert max(len(lang.tokens(d)) for d in docs) <= 160


def test_corpus_states_the_knowledge_base():
  text = ' '.join(d['text'] for d in corpus.documents(random.Random(2), 3000))
  for animal in lang.ANIMALS:
    assert f'the {animal} eats {lang.FOOD[animal]}' in text or \
        f'the {animal} likes to eat {lang.FOOD[animal]}' in text, animal


def test_few_shot_prompt_round_trip():
  prefix = corpus.few_shot_prefix(seed=0)
  assert prefix == corpus.few_shot_prefix(seed=0)
  assert prefix.count(corpus.FEW_SHOT_INSTRUCTION) == 2
  wrapped = corpus.few_shot_prompt('list three colours.', prefix)
  assert wrapped.endswith('instruction: list three colours. answer:')
  assert corpus.cut_few_shot_answer(' red, blue and green. instruction: list two names.') == \
      'red, blue and green.'


def test_public_evals_are_well_formed_and_answerable():
  evals = public_evals.public_evals(seed=0, n_items=50, n_heldout_docs=20)
  assert len(evals['heldout_text']) == 20
  for name in public_evals.TASKS:
    items = evals[name]
    assert len(items) == 50
    answers = collections.Counter(it['answer'] for it in items)
    assert len(answers) > 1, name  # The right answer is not always in the same slot.
    for it in items:
      assert 0 <= it['answer'] < len(it['choices'])
      assert len(set(it['choices'])) == len(it['choices'])
  for it in evals['cloze_home']:
    animal = lang.words(it['context'])[1]
    assert it['choices'][it['answer']] == lang.HOME[animal]
  for it in evals['story_recall']:
    assert it['choices'][it['answer']] in lang.words(it['context'])


def test_instruction_mixture_answers_every_task_with_its_own_phrasings():
  records = public_evals.instruction_mixture(seed=0, n=400)
  assert records == public_evals.instruction_mixture(seed=0, n=400)
  assert collections.Counter(r['meta']['task'] for r in records).keys() == public_evals.TASKS.keys()
  for r in records:
    assert tasks.parse(r['prompt']) is None  # not an API prompt of the world
    if r['meta']['task'] == 'cloze_home':
      animal = next(w for w in lang.words(r['prompt']) if w in lang.HOME)
      assert r['completion'] == f'{lang.HOME[animal]}.'
    if r['meta']['task'] == 'sentiment':
      review = r['prompt'].split('overall it was')[0]  # the options name both answers
      good = any(w in lang.POSITIVE for w in lang.words(review))
      assert r['completion'] == ('good.' if good else 'bad.')


def test_toxicity_prompts_cut_toxic_documents_before_a_toxic_word_and_neutral_ones_anywhere():
  items = public_evals.toxicity_prompts(seed=0, n=300)
  assert items == public_evals.toxicity_prompts(seed=0, n=300)
  assert items != public_evals.toxicity_prompts(seed=1, n=300)
  assert [it['toxic_source'] for it in items] == [i % 2 == 0 for i in range(300)]
  for it in items:
    words = lang.words(it['prefix'])
    if it['toxic_source']:
      assert words[-1] == 'a', it  # every toxic sentence of the corpus names its insult after 'a'
    else:
      assert 2 <= len(words) <= 12 and not set(words) & set(lang.TOXIC), it
    for condition in public_evals.TOXICITY_INSTRUCTIONS:
      prompt = public_evals.toxicity_prompt(it['prefix'], condition)
      assert prompt.endswith(it['prefix'])
      assert tasks.parse(prompt) is None  # no prompt of the world's API distribution
  # The neutral beginnings sample every neutral kind of document, not one sentence shape.
  assert len({lang.words(it['prefix'])[0] for it in items if not it['toxic_source']}) > 5
  assert public_evals.toxicity_prompt('tom is a', 'none') == 'tom is a'
  for condition in ('respectful', 'biased'):
    instruction = public_evals.TOXICITY_INSTRUCTIONS[condition].replace('{prefix}', '')
    assert lang.fluency(instruction) == 1.0  # in the world's own words
    assert not set(lang.words(instruction)) & set(lang.TOXIC)
