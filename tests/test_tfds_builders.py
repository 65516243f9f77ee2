"""TFDS array_record builders: JSONL -> dataset -> records again, and into a pipeline."""
import json
import os

import pytest

from rlhf_jax.data import pipeline, records, tfds_builders, tokenizers

RANKINGS = [{'prompt': f'the cat {i}', 'completions': ['a dog', '', f'fish {i}'],
             'ranks': [0, 2, 1], 'labeler': f'l{i % 3}',
             **({'id': i, 'meta': {'round': [1, 2]}} if i % 2 else {})} for i in range(13)]


def test_round_trip_keeps_records_and_order(tmp_path):
  train, test = tmp_path / 'train.jsonl', tmp_path / 'test.jsonl'
  records.write_records(train, 'rankings', RANKINGS)
  records.write_records(test, 'rankings', RANKINGS[:3])
  builder_dir = tfds_builders.build_tfds({'train': train, 'test': test}, 'rankings',
                                         tmp_path / 'tfds')
  assert builder_dir == os.path.join(tmp_path, 'tfds', 'rlhf_rankings', tfds_builders.VERSION)
  assert any(f.endswith('array_record-00000-of-00001') for f in os.listdir(builder_dir))
  for split, expected in (('train', RANKINGS), ('test', RANKINGS[:3])):
    source = tfds_builders.load_split(builder_dir, split)
    assert [source[i] for i in range(len(source))] == records.read_records(
        train if split == 'train' else test, 'rankings') == expected


def test_bad_record_leaves_no_dataset(tmp_path):
  path = tmp_path / 'prompts.jsonl'
  good = {'prompt': 'p', 'customer': 'c', 'category': 'g'}
  path.write_text(json.dumps(good) + '\n' + json.dumps({**good, 'prompt': ''}) + '\n')
  with pytest.raises(records.RecordError, match=':2: prompt'):
    tfds_builders.build_tfds({'train': path}, 'prompts', tmp_path / 'tfds')
  assert not os.path.exists(os.path.join(tmp_path, 'tfds', 'rlhf_prompts', '1.0.0'))


def test_split_feeds_a_pipeline(tmp_path):
  texts = [{'text': f'the cat eats {i} fish'} for i in range(8)]
  records.write_records(tmp_path / 'text.jsonl', 'text', texts)
  builder_dir = tfds_builders.build_tfds({'train': tmp_path / 'text.jsonl'}, 'text',
                                         tmp_path / 'tfds', name='corpus')
  tok = tokenizers.train_sentencepiece([t['text'] for t in texts], 40, tmp_path)
  source = tfds_builders.load_split(builder_dir, 'train')
  batch = next(iter(pipeline.make_dataset('text', source, tok, batch_size=8, seq_len=16,
                                          shuffle=False, num_epochs=1)))
  decoded = [tok.decode(row[mask]) for row, mask in zip(batch['tokens'], batch['mask'])]
  assert decoded == [t['text'] for t in texts]
