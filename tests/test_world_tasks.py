"""Task families of the InstructGPT-mini world: prompts parse back, judges accept demonstrations
and reject each kind of corrupted response."""
import random

import pytest

from rlhf_jax.world import corrupt, tasks
from rlhf_jax.world import language as lang

FAMILIES = sorted(tasks.FAMILIES)
N = 150


def _prompts(family: str, seed: int = 0) -> list[tuple[str, str]]:
  rng = random.Random(seed)
  out = []
  for _ in range(N):
    prompt = tasks.sample_prompt(family, rng)
    out.append((prompt, tasks.demonstrate(prompt, rng)))
  return out


@pytest.mark.parametrize('family', FAMILIES)
def test_prompts_parse_back_to_their_family(family):
  for prompt, _ in _prompts(family):
    parsed = tasks.parse(prompt)
    assert parsed is not None and parsed[0].name == family, prompt


@pytest.mark.parametrize('family', FAMILIES)
def test_judge_accepts_own_demonstrations(family):
  for prompt, demo in _prompts(family):
    j = tasks.judge(prompt, demo)
    assert j.acceptable and j.category == family, (prompt, demo, j)
    assert j.fluency == 1.0 and j.quality > 0.95, (prompt, demo, j)


# Hallucination is judged on closed-domain tasks only, so it is checked on those families alone.
CORRUPTIONS = [(family, kind) for family in FAMILIES
               for kind in ('wrong_answer', 'toxic', 'off_task', 'hallucination', 'broken_constraint')
               if kind != 'hallucination' or family in tasks.CLOSED_DOMAIN]


@pytest.mark.parametrize('family,kind', CORRUPTIONS)
def test_judge_rejects_corrupted_demonstrations(family, kind):
  rng = random.Random(1)
  checked = 0
  for prompt, demo in _prompts(family):
    bad = corrupt.corrupt(prompt, demo, kind, rng)
    if bad is None:
      continue
    j = tasks.judge(prompt, bad)
    checked += 1
    assert not j.acceptable, (prompt, bad, j)
    assert j.quality < tasks.judge(prompt, demo).quality, (prompt, bad, j)
    specific = {'toxic': j.inappropriate, 'hallucination': j.hallucination,
                'broken_constraint': j.satisfies_constraint is False,
                'off_task': not j.follows_instruction}
    assert specific.get(kind, True), (kind, prompt, bad, j)
  if family in ('extraction', 'rewrite') and kind == 'broken_constraint':
    assert checked == 0  # These families set no explicit constraint.
  else:
    assert checked > 10


def test_open_qa_checks_world_knowledge():
  prompt = 'where does the fox live?'
  assert lang.HOME['fox'] == 'forest'
  assert tasks.judge(prompt, 'the fox lives in the forest.').correct
  wrong = tasks.judge(prompt, 'the fox lives in the river.')
  assert wrong.follows_instruction and wrong.correct is False and not wrong.acceptable
  hedged = tasks.judge(prompt, 'the forest or the river.')
  assert hedged.correct is False


def test_constraints_are_read_from_the_prompt():
  one = 'what does the bear eat? answer in one word.'
  assert tasks.judge(one, 'honey.').satisfies_constraint is True
  assert tasks.judge(one, 'the bear eats honey.').satisfies_constraint is False
  assert tasks.judge('what does the bear eat?', 'honey.').satisfies_constraint is None
  listing = 'list three colours.'
  assert tasks.judge(listing, 'red, blue and green.').satisfies_constraint is True
  assert tasks.judge(listing, 'red, blue, pink and green.').satisfies_constraint is False
  assert not tasks.judge(listing, 'fox, owl and cow.').follows_instruction


def test_closed_qa_answers_from_the_text_not_from_memory():
  prompt = ('ben went to the farm with a fox. the fox was blue. ben ate some corn and ben found '
            'a red kite. what colour was the fox? answer in one word.')
  assert tasks.judge(prompt, 'blue.').acceptable
  from_memory = tasks.judge(prompt, f'{lang.COLOUR["fox"]}.')
  assert from_memory.correct is False and not from_memory.acceptable


def test_instruction_continuations_and_foreign_text_fail():
  prompt = 'write a story about anna and the fox.'
  assert not tasks.judge(prompt, 'write a story about ben and the owl.').follows_instruction
  assert not tasks.judge(prompt, '').follows_instruction
  foreign = tasks.judge('translate this into french: hello.', 'bonjour.')
  assert foreign.category == '' and not foreign.acceptable


def test_prompts_and_demonstrations_are_short():
  for family in FAMILIES:
    for prompt, demo in _prompts(family):
      assert len(lang.tokens(prompt)) <= 64 and len(lang.tokens(demo)) <= 40, (prompt, demo)


def test_demonstrate_rejects_foreign_prompt():
  with pytest.raises(ValueError, match='not a prompt'):
    tasks.demonstrate('what is the capital of france?', random.Random(0))
