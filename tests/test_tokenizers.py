"""Tokenizers: sentencepiece training and loading, HF folders, the pad != eos guarantee."""
import json
import os
import random

import pytest
import tokenizers as hf_tokenizers

from rlhf_jax.data import tokenizers

WORDS = ('the', 'red', 'blue', 'cat', 'dog', 'eats', 'sees', 'a', 'big', 'small', 'fish', 'apple',
         'runs', 'in', 'park', 'quickly')


def corpus(n: int = 300, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + f'. {i % 97}'
          for i in range(n)]


def save_bpe_json(folder: str, special_tokens: list[str]) -> str:
  """A tiny byte-level BPE trained with the `tokenizers` library, saved as tokenizer.json."""
  tok = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  tok.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf_tokenizers.decoders.ByteLevel()
  trainer = hf_tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=special_tokens,
      initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(corpus(100), trainer)
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, 'tokenizer.json'))
  return folder


@pytest.fixture(scope='module')
def spm_tok(tmp_path_factory):
  return tokenizers.train_sentencepiece(corpus(), 120, tmp_path_factory.mktemp('spm'))


def test_sentencepiece_round_trip_and_special_ids(spm_tok):
  assert isinstance(spm_tok, tokenizers.Tokenizer)
  assert (spm_tok.pad_id, spm_tok.bos_id, spm_tok.eos_id) == (0, 2, 3)
  assert spm_tok.vocab_size == 120
  text = 'the big cat eats 12 fish.\n  a dog runs quickly'
  ids = spm_tok.encode(text)
  assert spm_tok.decode(ids) == text
  assert {spm_tok.bos_id, spm_tok.eos_id, spm_tok.pad_id}.isdisjoint(ids)
  assert spm_tok.decode([spm_tok.bos_id] + ids + [spm_tok.eos_id, spm_tok.pad_id]) == text


def test_sentencepiece_encodings_concatenate(spm_tok):
  prompt, completion = 'the cat sees', ' a red apple'
  ids = spm_tok.encode(prompt) + spm_tok.encode(completion)
  assert spm_tok.decode(ids) == prompt + completion


def test_sentencepiece_is_deterministic_and_loadable(tmp_path, spm_tok):
  again = tokenizers.train_sentencepiece(corpus(), 120, tmp_path / 'b')
  with open(spm_tok.path, 'rb') as a, open(again.path, 'rb') as b:
    assert a.read() == b.read()
  for path in (tmp_path / 'b', again.path):
    loaded = tokenizers.load_tokenizer(path)
    assert loaded.encode('the dog') == spm_tok.encode('the dog')


def test_sentencepiece_from_corpus_file(tmp_path, spm_tok):
  path = tmp_path / 'corpus.txt'
  path.write_text('\n'.join(corpus()), encoding='utf-8')
  tok = tokenizers.train_sentencepiece(corpus_file=path, vocab_size=120, out_dir=tmp_path)
  assert tok.encode('the fish') == spm_tok.encode('the fish')


def test_hf_bare_tokenizer_json_gets_distinct_pad(tmp_path):
  folder = save_bpe_json(str(tmp_path / 'hf'), ['<|endoftext|>'])
  tok = tokenizers.load_tokenizer(folder)
  assert isinstance(tok, tokenizers.HFTokenizer)
  eos = tok._tok.convert_tokens_to_ids('<|endoftext|>')
  assert tok.eos_id == tok.bos_id == eos  # No bos in the vocabulary: eos doubles as bos.
  assert tok.pad_id != tok.eos_id
  assert tok.pad_id == tok.vocab_size - 1  # Appended `<pad>`.
  text = 'the cat, 3 dogs!\n'
  assert tok.decode(tok.encode(text) + [tok.eos_id, tok.pad_id]) == text


def test_hf_folder_with_config_keeps_its_pad(tmp_path):
  folder = save_bpe_json(str(tmp_path / 'hf'), ['<unk>', '<s>', '</s>', '<pad>'])
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>',
            'eos_token': '</s>', 'pad_token': '<pad>', 'unk_token': '<unk>'}
  with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
    json.dump(config, f)
  tok = tokenizers.load_tokenizer(folder)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
  assert tok.vocab_size == 300
  assert tok.decode(tok.encode('a big fish')) == 'a big fish'


def test_hf_without_eos_is_an_error_unless_named(tmp_path):
  folder = save_bpe_json(str(tmp_path / 'hf'), ['<end>'])
  with pytest.raises(ValueError, match='no eos'):
    tokenizers.load_tokenizer(folder)
  tok = tokenizers.load_tokenizer(folder, eos_token='<end>')
  assert tok.eos_id == 0 and tok.pad_id != 0


def test_load_tokenizer_rejects_unknown_paths(tmp_path):
  with pytest.raises(FileNotFoundError):
    tokenizers.load_tokenizer(tmp_path)
