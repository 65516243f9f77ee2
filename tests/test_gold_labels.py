"""experiments/instructgpt_mini/gold_labels.py ranks comparisons by the world's gold score."""
import importlib.util
import pathlib

from rlhf_jax.world import build, labelers

_PATH = pathlib.Path(__file__).parents[1] / 'experiments' / 'instructgpt_mini' / 'gold_labels.py'
_spec = importlib.util.spec_from_file_location('gold_labels', _PATH)
gold_labels = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gold_labels)

PROMPT = 'please write a short story where finn meets a deer at the barn.'
GOOD = ' finn met a kind deer at the barn. they played all day. then finn went home.'
OFF_TOPIC = ' olga met a blue bee at the desert. then dan went home.'
EMPTY = ' .'


def test_ranks_follow_the_gold_score_and_all_tie_records_are_dropped():
  pool = build.labeler_pool(0, 'train', 8)
  completions = [OFF_TOPIC, GOOD, EMPTY]
  gold = [labelers.gold_utility(pool, PROMPT, c) for c in completions]
  assert len(set(gold)) == 3  # the case distinguishes all three
  records = [{'prompt': PROMPT, 'completions': completions, 'ranks': [0, 0, 1], 'labeler': 'x'},
             {'prompt': PROMPT, 'completions': [GOOD, GOOD], 'ranks': [0, 1], 'labeler': 'x'}]
  (ranked,) = gold_labels.gold_ranked(records, pool)
  order = sorted(range(3), key=lambda i: -gold[i])
  assert [ranked['ranks'][i] for i in order] == [0, 1, 2] and ranked['labeler'] == 'gold'
