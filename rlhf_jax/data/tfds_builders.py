"""JSONL record files -> array_record TFDS datasets, read back as grain data sources (no TF).

tensorflow-datasets (4.9.10 here) builds and reads array_record datasets without TensorFlow:
features are serialised by tfds's numpy example writer and decoded by
tfds.data_sources.ArrayRecordDataSource. So `build_tfds` uses a regular GeneratorBasedBuilder:

  build_tfds({'train': 'sft_train.jsonl', 'test': 'sft_test.jsonl'}, 'demonstrations',
             '<workdir>/data/tfds', name='sft')     # -> <workdir>/data/tfds/sft/1.0.0
  source = load_split('<workdir>/data/tfds/sft/1.0.0', 'train')
  pipeline.make_dataset('demonstrations', source, tokenizer, ...)

Records keep their file order (shuffling is the pipeline's job), so `source[i]` is the i-th
record of the JSONL file and PromptBatch['index'] can be looked up in it. Optional record
fields (`id`, `meta`) travel as one JSON string feature, so records come back exactly as
records.read_records returns them. tfds writes into a temporary folder and renames it when
complete, so an interrupted build leaves nothing that reads as a dataset.
"""
import json
import os
import shutil
import tempfile
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from rlhf_jax.data import records

VERSION = '1.0.0'
_EXTRA = 'extra'  # JSON of the record's optional fields, '' when it has none.


def _features(kind: str) -> tfds.features.FeaturesDict:
  text = tfds.features.Text()
  features = {field: text for field in records.FIELDS[kind]}
  if 'completions' in features:
    features['completions'] = tfds.features.Sequence(text)
  if kind == 'rankings':
    features['ranks'] = tfds.features.Sequence(np.int32)
  return tfds.features.FeaturesDict({**features, _EXTRA: text})


def _encode(record: dict) -> dict:
  """A validated record as tfds features."""
  extra = {k: record[k] for k in records.OPTIONAL_FIELDS if k in record}
  out = {k: v for k, v in record.items() if k not in records.OPTIONAL_FIELDS}
  return {**out, _EXTRA: json.dumps(extra, ensure_ascii=False) if extra else ''}


def _decode(example: dict) -> dict:
  """tfds's decoded numpy example (bytes, numpy ints) as a plain record dict."""
  record = {}
  for key, value in example.items():
    if isinstance(value, bytes):
      record[key] = value.decode('utf-8')
    elif key == 'completions':
      record[key] = [v.decode('utf-8') for v in value]
    else:
      record[key] = [int(v) for v in value]
  extra = record.pop(_EXTRA)
  return {**record, **(json.loads(extra) if extra else {})}


def _builder_class(kind: str, name: str, splits: Mapping[str, str | os.PathLike]) -> type:
  """A GeneratorBasedBuilder (not registered globally) for one set of JSONL files."""

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Validated `kind` records from JSONL files, one split per file."""
    VERSION = tfds.core.Version(VERSION)
    # No checksums file to find: tfds's lookup of one beside the builder's code imports
    # `importlib_resources`, which tfds does not depend on (ModuleNotFoundError without it).
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(builder=self, features=_features(kind),
                                   description=f'rlhf_jax {kind} records',
                                   disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager  # Everything is local.
      return {split: self._generate_examples(path) for split, path in splits.items()}

    def _generate_examples(self, path):
      for i, record in enumerate(records.iter_records(path, kind)):
        yield i, _encode(record)

  Builder.name = name
  return Builder


def build_tfds(splits: Mapping[str, str | os.PathLike], kind: str,
               data_dir: str | os.PathLike, *, name: str | None = None,
               overwrite: bool = False) -> str:
  """Validates JSONL files of one kind and writes them as an array_record TFDS dataset.

  Args:
    splits: split name -> JSONL path, e.g. {'train': ..., 'test': ...}.
    kind: one of records.KINDS.
    data_dir: the TFDS data directory, e.g. `<workdir>/data/tfds`.
    name: the dataset's snake_case name; default `rlhf_<kind>`.
    overwrite: rebuild even if the dataset exists (otherwise an existing one is kept).

  Returns:
    The dataset directory `data_dir/name/VERSION`, for load_split.

  Raises:
    records.RecordError: for the first bad record (no dataset is left behind).
  """
  if kind not in records.FIELDS:
    raise ValueError(f'unknown record kind {kind!r}, expected one of {records.KINDS}')
  name = name or f'rlhf_{kind}'
  builder_dir = os.path.join(os.fspath(data_dir), name, VERSION)
  if overwrite and os.path.isdir(builder_dir):
    shutil.rmtree(builder_dir)
  builder = _builder_class(kind, name, splits)(data_dir=os.fspath(data_dir),
                                                file_format='array_record')
  with tempfile.TemporaryDirectory() as downloads:  # tfds insists on a download folder.
    builder.download_and_prepare(download_dir=downloads)
  return builder_dir


class RecordSource:
  """One split of a built dataset as a random-access sequence of record dicts (a grain source)."""

  def __init__(self, builder_dir: str | os.PathLike, split: str):
    builder = tfds.builder_from_directory(os.fspath(builder_dir))
    self._source = builder.as_data_source(split)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return _decode(self._source[int(index)])

  def __repr__(self) -> str:
    return f'RecordSource({self._source!r})'


def load_split(builder_dir: str | os.PathLike, split: str) -> RecordSource:
  """The records of `split` of the dataset at `builder_dir` (as returned by build_tfds)."""
  return RecordSource(builder_dir, split)
