"""Tokenizers behind one small interface: a trained sentencepiece model or a local HF folder.

Every tokenizer exposes `encode(text) -> ids` (no special tokens added), `decode(ids) -> text`
(special tokens dropped), `vocab_size`, and the ids `bos_id`, `eos_id`, `pad_id` with
`pad_id != eos_id` always: pipelines and the sampler tell a finished response (ends in eos) from
padding, and a model must never learn to emit pad. `bos_id` may equal `eos_id` (GPT-2 style).

Sentencepiece models trained here reserve pad=0, unk=1, bos=2, eos=3 and use identity
normalisation without a dummy prefix, so `decode(encode(a) + encode(b)) == a + b` for text whose
characters were seen in training: prompts and completions can be encoded apart and concatenated.
"""
import io
import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import sentencepiece as spm

SPM_FILENAME = 'spm.model'
PAD_TOKEN = '<pad>'
# Names by which tokenizer.json files without a tokenizer_config.json mark their special tokens.
_EOS_NAMES = ('<|endoftext|>', '</s>', '<eos>', '<|end_of_text|>', '<|eot_id|>')
_BOS_NAMES = ('<s>', '<bos>', '<|begin_of_text|>')


@runtime_checkable
class Tokenizer(Protocol):
  """What pipelines, samplers and evaluations need from a tokenizer."""

  vocab_size: int
  bos_id: int
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; bos, eos and pad ids are dropped."""


class SentencePieceTokenizer:
  """A sentencepiece model file behind the Tokenizer interface."""

  def __init__(self, model_file: str | os.PathLike):
    self.path = os.fspath(model_file)
    self._sp = spm.SentencePieceProcessor(model_file=self.path)
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id, self.eos_id, self.pad_id = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()
    if min(self.bos_id, self.eos_id, self.pad_id) < 0 or self.pad_id == self.eos_id:
      raise ValueError(f'{self.path}: a sentencepiece model needs bos, eos and a pad distinct '
                       f'from eos (got bos={self.bos_id} eos={self.eos_id} pad={self.pad_id})')

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


class HFTokenizer:
  """A transformers fast tokenizer behind the Tokenizer interface.

  A tokenizer with no pad token, or whose pad is its eos (GPT-2, Llama), gets a new `<pad>`
  special token appended to the vocabulary: `vocab_size` (= len(tokenizer)) grows by one, so a
  model imported for it must have at least that many embedding rows. Reusing a real token as pad
  would make pad ids ambiguous. A tokenizer with no bos uses eos as bos.
  """

  def __init__(self, hf_tokenizer, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._tok = hf_tokenizer
    if self._tok.eos_token_id is None:
      raise ValueError(f'{self.path}: the tokenizer has no eos token; pass eos_token= to '
                       'load_tokenizer')
    if self._tok.pad_token_id is None or self._tok.pad_token_id == self._tok.eos_token_id:
      self._tok.add_special_tokens({'pad_token': PAD_TOKEN})
    self.eos_id = self._tok.eos_token_id
    self.pad_id = self._tok.pad_token_id
    bos = self._tok.bos_token_id
    self.bos_id = self.eos_id if bos is None else bos
    self.vocab_size = len(self._tok)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False)

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _training_lines(texts: Iterable[str]) -> Iterable[str]:
  # Newline is a user-defined piece, so documents are fed line by line (sentencepiece skips
  # sentences longer than max_sentence_length bytes rather than splitting them).
  for text in texts:
    yield from (line for line in text.split('\n') if line)


def train_sentencepiece(texts: Iterable[str] | None = None, vocab_size: int = 1000,
                        out_dir: str | os.PathLike = '.', *,
                        corpus_file: str | os.PathLike | None = None,
                        model_type: str = 'bpe', byte_fallback: bool = False
                        ) -> SentencePieceTokenizer:
  """Trains a sentencepiece model and saves it as `out_dir/spm.model`.

  Deterministic: the same corpus and arguments give a byte-identical model file wherever it is
  written (one thread, input neither sampled nor shuffled, no path stored in the model).
  Ids 0..3 are pad, unk, bos, eos; `\\n` is a piece of its own.

  Args:
    texts: documents to train on; or None with `corpus_file`.
    vocab_size: pieces in the model; a soft limit (a tiny corpus may yield fewer).
    out_dir: directory for the model; created if missing.
    corpus_file: a UTF-8 text file, one or more lines per document, instead of `texts`.
    model_type: 'bpe' or 'unigram'.
    byte_fallback: encode unseen characters as bytes (needs vocab_size > 260) instead of unk.

  Returns:
    The trained tokenizer.
  """
  if (texts is None) == (corpus_file is None):
    raise ValueError('train_sentencepiece: pass exactly one of texts and corpus_file')
  if corpus_file is not None:
    with open(corpus_file, encoding='utf-8') as f:
      texts = [f.read()]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_training_lines(texts)), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=['\n'],
      normalization_rule_name='identity', add_dummy_prefix=False,
      remove_extra_whitespaces=False, split_digits=True, byte_fallback=byte_fallback,
      character_coverage=1.0, num_threads=1, shuffle_input_sentence=False,
      input_sentence_size=0, minloglevel=2)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, SPM_FILENAME)
  with open(path, 'wb') as f:
    f.write(model.getvalue())
  return SentencePieceTokenizer(path)


def from_pretrained(folder: str, **kwargs):
  """transformers' AutoTokenizer of a local folder, never running code the folder ships.

  Without trust_remote_code=False a tokenizer_config.json with an `auto_map` makes transformers
  ask on stdin whether to import the folder's Python files (and a piped "y" says yes).

  Raises:
    HFError: one line, when transformers cannot load the folder that way.
  """
  import transformers  # Imported here: both are slow to import and only HF folders need them.
  from rlhf_jax.hf import HFError
  try:
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                      trust_remote_code=False, **kwargs)
  except Exception as e:  # transformers signals bad folders with many exception types
    raise HFError(f'{folder}: transformers cannot load the tokenizer (code shipped in the folder '
                  f'is never run): {" ".join(str(e).split())[:300]}') from None


def _load_hf(folder: str, eos_token: str | None, bos_token: str | None) -> HFTokenizer:
  """A tokenizer from a local HF folder, with or without tokenizer_config.json."""
  import transformers  # Imported here: it is slow to import and only this path needs it.
  overrides = {k: v for k, v in (('eos_token', eos_token), ('bos_token', bos_token)) if v}
  if os.path.exists(os.path.join(folder, 'tokenizer_config.json')):
    tok = from_pretrained(folder, **overrides)
  else:
    # A bare tokenizer.json (as the `tokenizers` library saves) names no special roles.
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(folder, 'tokenizer.json'))
    vocab = tok.get_vocab()
    for role, names in (('eos_token', _EOS_NAMES), ('bos_token', _BOS_NAMES)):
      found = overrides.get(role) or next((n for n in names if n in vocab), None)
      if found:
        tok.add_special_tokens({role: found})
  return HFTokenizer(tok, folder)


def load_tokenizer(path: str | os.PathLike, *, eos_token: str | None = None,
                   bos_token: str | None = None) -> Tokenizer:
  """Loads a sentencepiece model or a local Hugging Face tokenizer folder (no network).

  Args:
    path: a `.model` sentencepiece file; a folder holding `spm.model` (as train_sentencepiece
      writes); or a folder holding `tokenizer.json` (and optionally tokenizer_config.json).
    eos_token: HF only: the eos token's string, when the folder does not say (a bare
      tokenizer.json is searched for common names such as `<|endoftext|>` and `</s>`).
    bos_token: HF only: likewise for bos.

  Returns:
    A Tokenizer with pad_id != eos_id (see HFTokenizer for how a pad is added).
  """
  path = os.fspath(path)
  if os.path.isfile(path) and path.endswith('.model'):
    return SentencePieceTokenizer(path)
  if os.path.isfile(os.path.join(path, 'tokenizer.json')):
    return _load_hf(path, eos_token, bos_token)
  if os.path.isfile(os.path.join(path, SPM_FILENAME)):
    return SentencePieceTokenizer(os.path.join(path, SPM_FILENAME))
  raise FileNotFoundError(f'{path}: neither a .model file nor a folder with tokenizer.json or '
                          f'{SPM_FILENAME}')
