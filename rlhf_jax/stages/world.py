"""The world stage: InstructGPT-mini datasets, tokenizer and data card in <workdir>/data."""
import json
import pathlib
import shutil

import ml_collections

from rlhf_jax.data import records, tokenizers
from rlhf_jax.stages.layout import WorkdirError
from rlhf_jax.world import build

# Written into <workdir>/data before anything else: files there with the world's names are then
# the world's own, which a later attempt replaces. The folder may hold a user's files too.
MARKER = '.written_by_world'

def paths(data_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every file the world writes, by role (the other stages read them through this)."""
  files = {
      'pretrain': 'pretrain.jsonl',
      'pretrain_valid': 'pretrain_valid.jsonl',
      'sft_train': 'demonstrations_sft_train.jsonl',
      'sft_valid': 'demonstrations_sft_valid.jsonl',
      'rm_demonstrations': 'demonstrations_rm.jsonl',
      'prompts_sft_valid': 'prompts_sft_valid.jsonl',
      'prompts_rm': 'prompts_rm.jsonl',
      'prompts_rm_valid': 'prompts_rm_valid.jsonl',
      'prompts_ppo': 'prompts_ppo.jsonl',
      'prompts_ppo_valid': 'prompts_ppo_valid.jsonl',
      'prompts_test': 'prompts_test.jsonl',
      'public_evals': 'public_evals.json',
      'valid_text': 'pretrain_valid_select.jsonl',
      'valid_evals': 'public_evals_valid.json',
      'few_shot_prefix': 'few_shot_prefix.txt',
      'tokenizer': 'tokenizer',
      'card': 'card.json',
  }
  return {role: data_dir / name for role, name in files.items()}


def _remove_own_files(data_dir: pathlib.Path) -> None:
  """Removes the world's summary and files from `data_dir`, and nothing else.

  Raises:
    WorkdirError: a file has one of the world's names but the world never wrote there.
  """
  summary = data_dir / 'summary.json'
  present = [path for path in paths(data_dir).values() if path.exists()]
  if present and not (summary.exists() or (data_dir / MARKER).exists()):
    raise WorkdirError(f'{present[0]}: the world stage writes a file of this name but did not '
                       f'write this one; move it out of {data_dir}')
  summary.unlink(missing_ok=True)  # first: a crash below leaves the world incomplete
  for path in present:
    if path.is_dir():
      shutil.rmtree(path)
    else:
      path.unlink()


def run(config: ml_collections.ConfigDict, data_dir: pathlib.Path) -> dict:
  """Builds the world from (seed, scale) and writes it; identical files for identical inputs."""
  _remove_own_files(data_dir)  # an earlier attempt's, or a forced rerun's old world
  data_dir.mkdir(parents=True, exist_ok=True)
  (data_dir / MARKER).touch()
  p = paths(data_dir)
  print(f'[world] building InstructGPT-mini (seed {config.seed}, scale '
        f'{config.data.world_scale}) in {data_dir}', flush=True)
  world = build.build_world(seed=config.seed, scale=config.data.world_scale)
  # Every split is the world's own, disjoint by customer (paper Table 6): validation prompts
  # choose checkpoints and coefficients, test prompts only report.
  writes = {
      'pretrain': ('text', world.pretrain),
      'pretrain_valid': ('text', world.evals['heldout_text']),
      'valid_text': ('text', world.evals_valid['heldout_text']),
      'sft_train': ('demonstrations', world.demonstrations['sft']),
      'sft_valid': ('demonstrations', world.demonstrations['sft_valid']),
      'rm_demonstrations': ('demonstrations', world.demonstrations['rm']),
      'prompts_sft_valid': ('prompts', world.prompts['sft_valid']),
      'prompts_rm': ('prompts', world.prompts['rm']),
      'prompts_rm_valid': ('prompts', world.prompts['rm_valid']),
      'prompts_ppo': ('prompts', world.prompts['ppo']),
      'prompts_ppo_valid': ('prompts', world.prompts['ppo_valid']),
      'prompts_test': ('prompts', world.prompts['test']),
  }
  for role, (kind, recs) in writes.items():
    records.write_records(p[role], kind, recs)
  for role, evals in (('public_evals', world.evals), ('valid_evals', world.evals_valid)):
    tasks = {k: v for k, v in evals.items() if k != 'heldout_text'}
    p[role].write_text(json.dumps(tasks, sort_keys=True) + '\n')
  p['few_shot_prefix'].write_text(world.few_shot_prefix)
  texts = [r['text'] for r in world.pretrain] + [
      d['prompt'] + ' ' + d['completion'] for d in world.demonstrations['sft']]
  tok = tokenizers.train_sentencepiece(texts, vocab_size=config.data.tokenizer_vocab,
                                       out_dir=p['tokenizer'])
  data_card = build.card(world)
  data_card['tokenizer'] = {'vocab_size': tok.vocab_size, 'pad_id': tok.pad_id,
                            'eos_id': tok.eos_id, 'bos_id': tok.bos_id}
  data_card['files'] = {role: path.name for role, path in p.items()}
  p['card'].write_text(json.dumps(data_card, indent=2, sort_keys=True) + '\n')
  print(f'[world] labeler agreement: train {data_card["labeler_agreement_train"]:.3f} '
        f'(paper 0.726), held-out {data_card["labeler_agreement_heldout"]:.3f} (paper 0.773)',
        flush=True)
  return {'card': str(p['card']), 'tokenizer_vocab': tok.vocab_size,
          'labeler_agreement_train': data_card['labeler_agreement_train'],
          'labeler_agreement_heldout': data_card['labeler_agreement_heldout']}
