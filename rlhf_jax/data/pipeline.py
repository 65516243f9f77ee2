"""grain pipelines from records to fixed-shape numpy batches, one entry point: `make_dataset`.

Batches are dicts of numpy arrays (B = batch_size, T = seq_len, P = prompt_len, K = k_max):

  TokenBatch ('text', 'demonstrations'), right-padded:
    tokens       [B, T] int32  bos? + prompt + completion + eos, then pad_id
    mask         [B, T] bool   real (non-pad) tokens
    loss_mask    [B, T] bool   training targets: completion tokens (+ prompt tokens with
                               loss_on_prompt) for demonstrations, every real token for text;
                               never a segment's first token, so a loss may use loss_mask[:, 1:]
                               against logits[:, :-1] without looking at segments
    segment_ids  [B, T] int32  1, 2, ... per packed document, 0 on padding (unpacked: mask)
    positions    [B, T] int32  position inside the document, 0 on padding
  RankingBatch ('rankings'): each of the K completions as its own right-padded row
    tokens       [B, K, T] int32  bos? + prompt + completion + eos
    mask         [B, K, T] bool
    ranks        [B, K] int32     0 = best, equal = tie; -1 where not valid
    valid        [B, K] bool      False for the rows padding K up to k_max (all-pad rows)
  PromptBatch ('prompts'): LEFT-padded, so generation appends on the right
    tokens       [B, P] int32  pad_id ... bos? + prompt
    mask         [B, P] bool
    index        [B] int32     the record's position in `source` (look up customer, category)

Lengths follow the paper: a prompt (with bos) longer than `prompt_len` tokens is dropped, and a
response (completion + eos) is cut to `seq_len - prompt_len` tokens, losing its eos when cut.
Pretraining text is cut to `seq_len` unless packed.

Order: the whole source is shuffled by `seed` with a fresh permutation every epoch, the same on
every process, and repeated; the stream is cut into global batches of `batch_size * shard_count`
records and shard i reads the i-th block of `batch_size` of each, so P processes together feed
exactly the batches of one process with P times the batch size. Then rows are tokenized, filtered,
optionally packed, and batched with drop_remainder. Filtering and packing happen per shard, so a
dropped record or a packed row breaks that equality; with a finite `num_epochs` two shards may
also yield different numbers of batches, so multi-host training should run for a fixed number
of steps over the default endless repeat.

Resuming: `it = iter(dataset)`; `it.get_state()` is a small JSON-serialisable dict and
`it.set_state(state)` on a fresh iterator of the same dataset yields exactly the batches that
followed (grain's DatasetIterator checkpointing; it accounts for prefetching and packing).

Packing (`pack=True`): text is concatenated then split into full rows of T tokens (documents
end in eos; a long document continues in the next row as a new segment); demonstrations are
packed whole, first-fit, into rows of T. `segment_ids`/`positions` let attention stay within a
document; a model that ignores them attends across documents, as GPT-3 pretraining did.
"""
import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from grain import experimental as grain_x

from rlhf_jax.data import records
from rlhf_jax.data.tokenizers import Tokenizer

def _prompt_ids(tokenizer: Tokenizer, prompt: str, prompt_len: int,
                add_bos: bool) -> list[int] | None:
  """bos? + prompt ids, or None when longer than prompt_len (the paper filters such prompts)."""
  ids = [tokenizer.bos_id] * add_bos + tokenizer.encode(prompt)
  return ids if len(ids) <= prompt_len else None


def joined_completion(prompt: str, completion: str) -> str:
  """The completion as it follows its prompt in running text: after a space, unless one side
  already has the whitespace (HH-RLHF replies start with one). Tokenizers encode a word after a
  space differently from a word-initial fragment, so this keeps the first response token the
  one the model would see in text."""
  if completion[:1].isspace() or prompt[-1:].isspace() or not completion:
    return completion
  return ' ' + completion


def _response_ids(tokenizer: Tokenizer, prompt: str, completion: str,
                  response_len: int) -> list[int]:
  return (tokenizer.encode(joined_completion(prompt, completion)) + [tokenizer.eos_id])[:response_len]


def _pad_right(ids: Sequence[int], length: int, pad_id: int) -> np.ndarray:  # [length]
  out = np.full(length, pad_id, np.int32)
  out[:len(ids)] = ids
  return out


def _row(ids: np.ndarray, loss_mask: np.ndarray, seq_len: int, pad_id: int) -> dict:
  """A right-padded TokenBatch row from unpadded ids [n] and loss_mask [n]."""
  n = len(ids)
  mask = np.arange(seq_len) < n
  positions = np.where(mask, np.arange(seq_len), 0).astype(np.int32)
  return {'tokens': _pad_right(ids, seq_len, pad_id), 'mask': mask,
          'loss_mask': np.pad(loss_mask, (0, seq_len - n)) & (positions > 0),
          'segment_ids': mask.astype(np.int32), 'positions': positions}


def _from_packed(row: dict, pad_id: int) -> dict:
  """A TokenBatch row from grain's packed features (padding there is 0 with segment id 0)."""
  segment_ids, positions = row['tokens_segment_ids'], row['tokens_positions']
  mask = segment_ids > 0
  return {'tokens': np.where(mask, row['tokens'], pad_id).astype(np.int32), 'mask': mask,
          'loss_mask': row['loss_mask'].astype(bool) & mask & (positions > 0),
          'segment_ids': segment_ids.astype(np.int32), 'positions': positions.astype(np.int32)}


def _text_example(item: tuple[int, dict], tokenizer: Tokenizer, *, seq_len: int,
                  add_bos: bool, pack: bool, **_) -> dict:
  """Unpadded {'tokens', 'loss_mask'} of one document: bos? + text + eos (cut unless packed)."""
  ids = [tokenizer.bos_id] * add_bos + tokenizer.encode(item[1]['text']) + [tokenizer.eos_id]
  ids = np.asarray(ids if pack else ids[:seq_len], np.int32)
  return {'tokens': ids, 'loss_mask': np.ones(len(ids), bool)}


def _demonstration_example(item: tuple[int, dict], tokenizer: Tokenizer, *, seq_len: int,
                           prompt_len: int, add_bos: bool, loss_on_prompt: bool,
                           **_) -> dict | None:
  """Unpadded {'tokens', 'loss_mask'}: bos? + prompt + completion + eos; None if filtered."""
  prompt = _prompt_ids(tokenizer, item[1]['prompt'], prompt_len, add_bos)
  if prompt is None:
    return None
  response = _response_ids(tokenizer, item[1]['prompt'], item[1]['completion'],
                            seq_len - prompt_len)
  loss_mask = [loss_on_prompt] * len(prompt) + [True] * len(response)
  return {'tokens': np.asarray(prompt + response, np.int32),
          'loss_mask': np.asarray(loss_mask, bool)}


def _ranking_example(item: tuple[int, dict], tokenizer: Tokenizer, *, seq_len: int,
                     prompt_len: int, add_bos: bool, k_max: int, **_) -> dict | None:
  """One RankingBatch element; None if the prompt is too long."""
  index, record = item
  k = len(record['completions'])
  if k > k_max:
    raise ValueError(f'rankings record {index}: K={k} completions exceed k_max={k_max}')
  prompt = _prompt_ids(tokenizer, record['prompt'], prompt_len, add_bos)
  if prompt is None:
    return None
  tokens = np.full((k_max, seq_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((k_max, seq_len), bool)
  for i, completion in enumerate(record['completions']):
    ids = prompt + _response_ids(tokenizer, record['prompt'], completion, seq_len - prompt_len)
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, True
  ranks = np.full(k_max, -1, np.int32)
  ranks[:k] = record['ranks']
  return {'tokens': tokens, 'mask': mask, 'ranks': ranks, 'valid': np.arange(k_max) < k}


def _prompt_example(item: tuple[int, dict], tokenizer: Tokenizer, *, prompt_len: int,
                    add_bos: bool, **_) -> dict | None:
  """One left-padded PromptBatch element; None if the prompt is too long."""
  index, record = item
  ids = _prompt_ids(tokenizer, record['prompt'], prompt_len, add_bos)
  if ids is None:
    return None
  tokens = _pad_right(ids[::-1], prompt_len, tokenizer.pad_id)[::-1].copy()
  return {'tokens': tokens, 'mask': np.arange(prompt_len) >= prompt_len - len(ids),
          'index': np.int32(index)}


_EXAMPLES: dict[str, Callable[..., dict | None]] = {
    'text': _text_example, 'demonstrations': _demonstration_example,
    'rankings': _ranking_example, 'prompts': _prompt_example}

# What make_dataset reported inside `collecting_drops` (None outside): key -> report.
_drops: dict[tuple, dict] | None = None


@contextlib.contextmanager
def collecting_drops() -> Iterator[list[dict]]:
  """Collects what the datasets made inside drop, for a stage summary.

  Yields:
    A list, filled on exit with one report per source that lost records (see `_filter_report`);
    each source is counted and printed once however often a dataset of it is made.
  """
  global _drops
  outer, _drops = _drops, {}
  out = []
  try:
    yield out
  finally:
    out.extend(_drops.values())
    _drops = outer


def _filter_report(kind: str, source: Any, name: str, tokenizer: Tokenizer, *,
                   prompt_len: int, add_bos: bool) -> dict:
  """{'source', 'kind', 'records', 'kept', 'dropped': {reason: count}} of one source.

  The pipeline drops records lazily, inside an endless repeat: a source that loses every record
  would stream nothing forever, so the same test `_prompt_ids` applies runs over it once here.
  """
  dropped = sum(_prompt_ids(tokenizer, source[i]['prompt'], prompt_len, add_bos) is None
                for i in range(len(source)))
  reason = f'prompt longer than prompt_len={prompt_len} tokens' + (' with bos' if add_bos else '')
  return {'source': name, 'kind': kind, 'records': len(source), 'kept': len(source) - dropped,
          'dropped': {reason: dropped} if dropped else {}}


def _check_filtered(kind: str, source: Any, path: Any, tokenizer: Tokenizer, *, prompt_len: int,
                    add_bos: bool, min_records: int) -> None:
  """Reports dropped records (stage log, `collecting_drops`); raises when too few are left.

  Args:
    source: the records (a random-access sequence).
    path: the file they were read from, None for records given in memory.

  Raises:
    records.RecordError: fewer than `min_records` records survive the filter.
  """
  # A file is counted once per stage (validation sets are rebuilt at every evaluation).
  key = (str(path), kind, prompt_len, add_bos)
  report = _drops.get(key) if _drops is not None and path is not None else None
  if report is None:
    report = _filter_report(kind, source, str(path or f'<{len(source)} {kind} records>'),
                            tokenizer, prompt_len=prompt_len, add_bos=add_bos)
    if report['dropped'] and jax.process_index() == 0:
      print(f'[data] {report["source"]}: dropped {report["records"] - report["kept"]} of '
            f'{report["records"]} {kind} records ({", ".join(report["dropped"])}); '
            f'{report["kept"]} left', flush=True)
    if report['dropped'] and _drops is not None and path is not None:
      _drops[key] = report
  # A source that was small to begin with is the user's choice; one the filter shrank below
  # what the stream needs is a mistake (too short a prompt_len).
  if report['kept'] < (min_records if report['dropped'] else 1):
    why = ', '.join(f'{n} {reason}' for reason, n in report['dropped'].items()) or 'none dropped'
    need = 'nothing to read' if min_records == 1 else f'a batch needs {min_records}'
    raise records.RecordError(
        'prompt', f'{report["kept"]} of {report["records"]} {kind} records left ({why}), '
        f'{need}; raise data.prompt_len, shorten the prompts or add records', path)


def _ordered_records(source: Sequence[dict], *, seed: int, shuffle: bool, block: int,
                     shard_index: int, shard_count: int,
                     num_epochs: int | None) -> grain.MapDataset:
  """(source index, record) pairs of one process, shuffled per epoch and repeated.

  The order is shuffled over the whole source, the same on every process, and cut into global
  batches of `block * shard_count` records; shard `i` reads the i-th block of each. So P processes
  with `block` rows each feed exactly the global batches one process with `P * block` rows would.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index={shard_index} not in [0, shard_count={shard_count})')
  # Indices past the source's length are later epochs (grain's repeat), hence the modulo.
  ds = grain.MapDataset.source(source).map_with_index(lambda i, r: (i % len(source), r))
  if shuffle:
    ds = ds.shuffle(seed)
  ds = ds.repeat(num_epochs)
  if shard_count == 1:
    return ds
  span = block * shard_count
  ordered = ds
  ds = grain.MapDataset.range(len(ordered) // span * block).map(
      lambda i: ordered[i // block * span + shard_index * block + i % block])
  if not len(ds):
    raise ValueError(f'shard {shard_index} of {shard_count} is empty ({len(source)} records, '
                     f'{block} per process per batch)')
  return ds


def _pack(ds: grain.IterDataset, kind: str, *, seq_len: int, batch_size: int,
          seed: int) -> grain.IterDataset:
  """Packed rows of seq_len tokens (see the module docstring)."""
  lengths = {'tokens': seq_len, 'loss_mask': seq_len}
  if kind == 'text':
    return _JsonStateConcatThenSplit(grain_x.ConcatThenSplitIterDataset(ds, length_struct=lengths))
  if kind == 'demonstrations':
    return grain_x.FirstFitPackIterDataset(ds, length_struct=lengths, seed=seed,
                                           num_packing_bins=batch_size)
  raise ValueError(f'pack=True is for text and demonstrations, not {kind}')


class _JsonStateIterator(grain.DatasetIterator):
  """grain's concat-then-split iterator, restorable from its state after a JSON round trip.

  grain (0.2.18) tells whether the state holds a partly used document by comparing its
  `remainder_slices` with the tuple (-1, -1); JSON, the checkpoint format, turns them into
  lists, so a state saved between documents restores as if one were half used and the batches
  after the restore differ. Tuples are put back before grain sees the state.
  """

  def __next__(self) -> dict:
    return next(self._parent)

  def get_state(self) -> dict:
    return self._parent.get_state()

  def set_state(self, state: dict) -> None:
    slices = {key: tuple(value) for key, value in state['remainder_slices'].items()}
    self._parent.set_state({**state, 'remainder_slices': slices})


class _JsonStateConcatThenSplit(grain.IterDataset):

  def __iter__(self) -> _JsonStateIterator:
    return _JsonStateIterator(iter(self._parent))


def make_dataset(kind: str, source: Any, tokenizer: Tokenizer, *, batch_size: int,
                 seq_len: int, prompt_len: int | None = None, seed: int = 0,
                 shuffle: bool = True, shard_index: int | None = None,
                 shard_count: int | None = None, num_epochs: int | None = None,
                 pack: bool = False, k_max: int = 9, loss_on_prompt: bool = False,
                 add_bos: bool = True, min_records: int | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """A grain dataset of fixed-shape batches of one record kind (fields: module docstring).

  Args:
    kind: one of records.KINDS: 'text' and 'demonstrations' give TokenBatch, 'rankings'
      RankingBatch, 'prompts' PromptBatch.
    source: a JSONL path (read and validated whole), or a random-access sequence of records
      (a list from records.read_records, or tfds_builders.load_split).
    tokenizer: a Tokenizer; its pad_id pads, its bos_id/eos_id delimit.
    batch_size: B, per process: process i reads rows [i*B, (i+1)*B) of every global batch of
      B * shard_count rows (see _ordered_records). A last partial batch is dropped.
    seq_len: T, the context: prompt + response for demonstrations and rankings.
    prompt_len: P, the longest prompt kept (bos included); default seq_len // 2. Responses are
      cut to seq_len - prompt_len tokens.
    seed: shuffling (and packing) seed; the same seed gives the same batches.
    shuffle: False keeps source order within a shard (evaluation).
    shard_index: this process's shard; default jax.process_index().
    shard_count: number of shards; default jax.process_count().
    num_epochs: passes over the shard; None repeats forever.
    pack: pack several text documents / demonstrations into each row.
    k_max: rankings: K is padded to k_max; a record with more completions raises ValueError.
    loss_on_prompt: demonstrations: also train on prompt tokens.
    add_bos: start every sequence (each document, prompt) with bos_id.
    min_records: the fewest records that must be left when the prompt-length filter drops
      some (not for text); default one global batch (batch_size * shard_count) when
      shuffling, as for training, else 1.
    read_options: grain's threading / prefetch options for tokenization.

  Returns:
    A grain.IterDataset of dicts of numpy arrays; iterate it, or `iter()` it for a
    checkpointable iterator (get_state / set_state).

  Raises:
    records.RecordError: a record is invalid, or dropping prompts longer than prompt_len
      leaves none or fewer than `min_records` records (an endless stream of a source that
      keeps nothing would never yield a batch).
  """
  if kind not in _EXAMPLES:
    raise ValueError(f'unknown record kind {kind!r}, expected one of {records.KINDS}')
  prompt_len = seq_len // 2 if prompt_len is None else prompt_len
  if not 0 < prompt_len <= seq_len:
    raise ValueError(f'prompt_len={prompt_len} must be in (0, seq_len={seq_len}]')
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  path = source if isinstance(source, (str, os.PathLike)) else None
  if path is not None:
    source = records.read_records(path, kind)
  if kind != 'text':  # text is cut to length, never dropped
    if min_records is None:
      min_records = batch_size * shard_count if shuffle else 1
    _check_filtered(kind, source, path, tokenizer, prompt_len=prompt_len, add_bos=add_bos,
                    min_records=min_records)
  ds = _ordered_records(source, seed=seed, shuffle=shuffle, block=batch_size,
                        shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs)
  example = functools.partial(_EXAMPLES[kind], tokenizer=tokenizer, seq_len=seq_len,
                              prompt_len=prompt_len, add_bos=add_bos, pack=pack, k_max=k_max,
                              loss_on_prompt=loss_on_prompt)
  ds = ds.map(example).filter(lambda e: e is not None).to_iter_dataset(read_options)
  if pack:
    ds = _pack(ds, kind, seq_len=seq_len, batch_size=batch_size, seed=seed)
    ds = ds.map(functools.partial(_from_packed, pad_id=tokenizer.pad_id))
  elif kind in ('text', 'demonstrations'):
    ds = ds.map(lambda e: _row(e['tokens'], e['loss_mask'], seq_len, tokenizer.pad_id))
  return ds.batch(batch_size, drop_remainder=True)


def batch_spec(kind: str, *, batch_size: int, seq_len: int, prompt_len: int | None = None,
               k_max: int = 9) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of make_dataset's batches, for jax.eval_shape and ahead-of-time compiles."""
  b, t, p = batch_size, seq_len, seq_len // 2 if prompt_len is None else prompt_len
  i32, boolean = np.dtype(np.int32), np.dtype(bool)
  specs = {
      'text': {'tokens': ((b, t), i32), 'mask': ((b, t), boolean),
               'loss_mask': ((b, t), boolean), 'segment_ids': ((b, t), i32),
               'positions': ((b, t), i32)},
      'rankings': {'tokens': ((b, k_max, t), i32), 'mask': ((b, k_max, t), boolean),
                   'ranks': ((b, k_max), i32), 'valid': ((b, k_max), boolean)},
      'prompts': {'tokens': ((b, p), i32), 'mask': ((b, p), boolean), 'index': ((b,), i32)},
  }
  specs['demonstrations'] = specs['text']
  return {name: jax.ShapeDtypeStruct(*shape_dtype)
          for name, shape_dtype in specs[kind].items()}


class _ConcatBatchesIterator(grain.DatasetIterator):
  """Next batch of every parent, concatenated along the batch axis; state = the parents' states."""

  def __next__(self) -> dict:
    parts = [next(parent) for parent in self._parents]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

  def get_state(self) -> dict:
    return {'parents': [parent.get_state() for parent in self._parents]}

  def set_state(self, state: dict) -> None:
    for parent, parent_state in zip(self._parents, state['parents']):
      parent.set_state(parent_state)


class ConcatBatches(grain.IterDataset):
  """Batches with the same fields from several datasets, joined row-wise into one batch.

  This is how a fixed share of pretraining rows is mixed into every SFT batch (paper App. C.3:
  "we also mix in 10% pretraining data"): e.g. 29 demonstration rows + 3 text rows per step.
  Resuming restores every parent's position.
  """

  def __iter__(self) -> _ConcatBatchesIterator:
    return _ConcatBatchesIterator([iter(parent) for parent in self.parents])
