"""Load a local Hugging Face folder (GPT-2, GPT-NeoX/Pythia, Llama 2/3, Qwen2) as rlhf_jax params.

    config, params = load_hf('/models/pythia-1b', mesh=mesh)   # LanguageModel params

Tensors are read one at a time from model.safetensors or the shards of
model.safetensors.index.json (memory-mapped), converted to our layout on the host, stacked over
layers and placed straight onto the mesh with their NamedSharding: each device receives only its
slice, so no device ever holds a full copy. Host memory peaks at one stacked parameter.

The vocabulary is padded to a multiple of 128 with zero rows (and a row for the <pad> that
load_tokenizer appends to GPT-2/Llama tokenizers). A zero row's logit is exactly 0, which can
beat real tokens: until the model masks logits of ids at or above the checkpoint's vocabulary,
sampling from an imported model before fine-tuning may emit them. Reward / value models take
`params['trunk']` of the LM params.
"""
import functools
import json
import math
import mmap
import operator
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import sharding, state
from rlhf_jax.config_lib import pad_vocab
from rlhf_jax.hf import HFError, families
from rlhf_jax.models.config import ModelConfig

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
# Checkpoint dtypes we read (cast to the requested param dtype); quantised or integer tensors
# would need dequantisation we do not do.
DTYPES = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16}


# config.json size fields of the supported families; null means "derive it" for the optional ones.
_SIZES = ('vocab_size', 'n_embd', 'n_layer', 'n_head', 'n_positions', 'hidden_size',
          'num_hidden_layers', 'num_attention_heads', 'intermediate_size',
          'max_position_embeddings')
_OPTIONAL_SIZES = ('n_inner', 'num_key_value_heads', 'head_dim')


def _read_json(path: str) -> dict:
  """A JSON object file; HFError for anything else (including huge integers, deep nesting)."""
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    raise HFError(f'{path}: cannot read: {e}') from None
  if not isinstance(value, dict):
    raise HFError(f'{path}: expected a JSON object')
  return value


def _check_sizes(raw: dict, where: str) -> None:
  """Sizes must be positive integers: transformers accepts 0 (and some families strings) and
  the conversion would then divide by zero or build nonsense shapes."""
  for key in _SIZES + _OPTIONAL_SIZES:
    value = raw.get(key)
    if value is None and (key in _OPTIONAL_SIZES or key not in raw):
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise HFError(f'{where}: {key}={json.dumps(value)[:40]} must be a positive integer')


def _hf_config(path: str):
  """The transformers config of folder `path` (old and new config.json formats alike)."""
  import transformers  # Slow to import; only HF paths need it.
  where = os.path.join(path, 'config.json')
  raw = _read_json(where)
  model_type = raw.get('model_type')
  if model_type not in families.FAMILIES:
    raise HFError(f'{where}: unsupported architecture model_type={str(model_type)[:40]!r} '
                     f'(supported: {", ".join(families.FAMILIES)})')
  _check_sizes(raw, where)
  try:
    # Never run code shipped in the folder (auto_map): the supported families are built in.
    cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
  except Exception as e:  # transformers validates fields with several exception types
    raise HFError(f'{where}: transformers cannot read it: {" ".join(str(e).split())}'
                     ) from None
  return cfg, where


def _check_tokenizer(tokenizer, hf_vocab: int, path: str) -> int:
  """Rows the model needs for `tokenizer`: every id must be a checkpoint row except an appended
  <pad> (load_tokenizer adds one when the tokenizer has none), which gets a zero row."""
  n = tokenizer.vocab_size
  if n > hf_vocab and not (n == hf_vocab + 1 and tokenizer.pad_id == hf_vocab):
    raise HFError(f'{path}: the tokenizer has {n} tokens but the embedding has {hf_vocab} '
                     f'rows; tokenizer and model do not match')
  return n


def hf_model_config(path: str | os.PathLike, tokenizer=None) -> ModelConfig:
  """Our ModelConfig of a HF folder, vocab_size padded to a multiple of 128.

  Args:
    path: folder with config.json.
    tokenizer: optional rlhf_jax Tokenizer to be used with the model; its vocabulary must fit the
      checkpoint's (HFError otherwise) and an appended <pad> gets a row.
  """
  path = os.fspath(path)
  return _model_config(path, *_hf_config(path), tokenizer)


# What a model computes besides its dtypes, rematerialisation, loop unrolling and dropout (the
# run's own choices): a config differing from a folder in any of these trains another model.
ARCHITECTURE_FIELDS = ('vocab_size', 'real_vocab_size', 'n_layers', 'd_model', 'n_heads',
                       'kv_heads', 'd_head', 'd_ff', 'max_len', 'norm', 'norm_eps', 'positions',
                       'rotary_pct', 'rope_theta', 'rope_scaling', 'mlp', 'use_bias', 'qkv_bias',
                       'parallel_residual', 'tie_embeddings', 'attention_pattern')
_ROTARY_FIELDS = ('rotary_pct', 'rope_theta', 'rope_scaling')


def _architecture(c: ModelConfig) -> dict[str, Any]:
  """ARCHITECTURE_FIELDS of `c`, in the form that compares equal when the computation is."""
  out = {name: getattr(c, name) for name in ARCHITECTURE_FIELDS}
  out['real_vocab_size'] = c.real_vocab_size or c.vocab_size  # None: every row is real
  if c.rope_scaling is not None:
    out['rope_scaling'] = tuple(c.rope_scaling)
  if c.positions != 'rotary':
    for name in _ROTARY_FIELDS:
      del out[name]
  return out


def architecture_diff(path: str | os.PathLike, model: ModelConfig, tokenizer=None) -> list[str]:
  """Every architecture field where `model` differs from HF folder `path`, as
  'field=<folder's> (config: <model's>)'; empty when `model` computes what the folder does.

  Args:
    path: folder with config.json.
    model: the config a stage would train.
    tokenizer: the run's tokenizer, as for hf_model_config (an appended <pad> adds a row).
  """
  ours, theirs = _architecture(model), _architecture(hf_model_config(path, tokenizer))
  return [f'{name}={theirs.get(name)} (config: {ours.get(name)})'
          for name in ARCHITECTURE_FIELDS if ours.get(name) != theirs.get(name)]


def _model_config(path: str, cfg, where: str, tokenizer) -> ModelConfig:
  c = families.config_from_hf(cfg, where)
  rows = c.vocab_size if tokenizer is None else _check_tokenizer(tokenizer, c.vocab_size, path)
  return c.replace(vocab_size=pad_vocab(max(rows, c.vocab_size)), real_vocab_size=c.vocab_size)


class _Tensors:
  """Memory-mapped safetensors tensors of a folder, by name, across shards.

  safetensors' own numpy reader cannot return bfloat16, so the (simple) file format is read
  here: 8-byte little-endian header size, JSON header {name: dtype, shape, data_offsets}, data.
  """

  def __init__(self, path: str):
    self.path = path
    self._open = {}
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
      self.where = index
      self.file_of = _read_json(index).get('weight_map')
      if not isinstance(self.file_of, dict):
        raise HFError(f'{index}: weight_map must be an object of tensor name -> shard file')
      # Fail before reading anything when a shard is missing or lies outside the folder.
      for name, file in self.file_of.items():
        if (not isinstance(file, str) or os.path.isabs(file)
            or os.path.normpath(file).split(os.sep)[0] in (os.pardir, os.curdir)):
          raise HFError(f'{index}: tensor {name} names shard {json.dumps(file)[:80]}, not a '
                           'file inside the folder')
        if not os.path.exists(os.path.join(path, file)):
          raise HFError(f'{os.path.join(path, file)}: missing shard (holds tensor {name})')
    elif os.path.exists(os.path.join(path, SINGLE_FILE)):
      self.where = os.path.join(path, SINGLE_FILE)
      self.file_of = {n: SINGLE_FILE for n in self._header(SINGLE_FILE)[0]}
    else:
      raise HFError(f'{path}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors are read)')

  def _header(self, file: str) -> tuple[dict, int, mmap.mmap]:
    """(header without __metadata__, offset of the data, mapped file) of one file, cached."""
    if file not in self._open:
      full = os.path.join(self.path, file)
      try:
        with open(full, 'rb') as f:
          buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        n = int.from_bytes(buf[:8], 'little')
        if len(buf) < 8 or n > len(buf) - 8:
          raise ValueError(f'header size {n} exceeds the file size {len(buf)}')
        header = json.loads(buf[8:8 + n])
        if not isinstance(header, dict):
          raise ValueError('the header is not a JSON object')
      except (OSError, ValueError, RecursionError) as e:
        raise HFError(f'{full}: cannot read safetensors file: {e}') from None
      header.pop('__metadata__', None)
      self._open[file] = (header, 8 + n, buf)
    return self._open[file]

  def resolve(self, name: str, prefix: str) -> str:
    """`name`, or `name` without the base-model prefix (a bare AutoModel checkpoint)."""
    for candidate in (name, name.removeprefix(prefix)):
      if candidate in self.file_of:
        return candidate
    raise HFError(f'{self.where}: tensor {name} not found')

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Tensor `name` (already resolved) as a read-only array; checks shape and dtype."""
    file = self.file_of[name]
    header, start, buf = self._header(file)
    where = os.path.join(self.path, file)
    if name not in header:
      raise HFError(f'{where}: tensor {name} not found (the index names this shard)')
    meta = header[name]
    if not isinstance(meta, dict) or not isinstance(meta.get('shape'), list):
      raise HFError(f'{where}: tensor {name} has a malformed header entry')
    if meta.get('dtype') not in DTYPES:
      raise HFError(f'{where}: tensor {name} has dtype {str(meta.get("dtype"))[:20]}; '
                       f'accepted: {", ".join(DTYPES)}')
    if meta['shape'] != list(shape):
      raise HFError(f'{where}: tensor {name} has shape {tuple(meta["shape"])}, config.json '
                       f'implies {tuple(shape)}')
    dtype = np.dtype(DTYPES[meta['dtype']])
    offsets = meta.get('data_offsets')
    nbytes = math.prod(shape) * dtype.itemsize
    # The offsets must span exactly the tensor's bytes, inside the file's data section.
    ints = (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in offsets))
    if not (ints and 0 <= offsets[0] and offsets[1] - offsets[0] == nbytes
            and start + offsets[1] <= len(buf)):
      raise HFError(f'{where}: tensor {name} has data_offsets {str(offsets)[:60]}; '
                       f'expected {nbytes} bytes within the file\'s {len(buf) - start} data bytes')
    return np.frombuffer(buf, dtype, count=nbytes // dtype.itemsize,
                         offset=start + offsets[0]).reshape(shape)


def _read_group(tensors: _Tensors, group: families.Group, c: ModelConfig, prefix: str,
                dtype: np.dtype) -> list[np.ndarray]:
  """Our host arrays of one group, per-layer tensors stacked on a leading layers axis."""
  layers = range(c.n_layers) if group.per_layer else [None]
  out = []
  for i in layers:
    names = [tensors.resolve(n.format(i=i), prefix) for n in group.names]
    ours = group.to_ours(*(tensors.get(n, s) for n, s in zip(names, group.shapes)))
    if i is None:
      return [x.astype(dtype) for x in ours]
    if not out:
      out = [np.empty((c.n_layers,) + x.shape, dtype) for x in ours]
    for buf, x in zip(out, ours):
      buf[i] = x
  return out


def _place(host: np.ndarray, target: jax.sharding.Sharding | None) -> jax.Array:
  """Each device gets only its slice of the host array (no full copy on any device)."""
  if target is None:
    return jnp.asarray(host)
  return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def _nested_set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_hf(path: str | os.PathLike, *, mesh: Mesh | None = None, dtype: str = 'float32',
            tokenizer=None) -> tuple[ModelConfig, Any]:
  """Imports a HF causal LM folder as (ModelConfig, LanguageModel params).

  Args:
    path: folder with config.json and model.safetensors or model.safetensors.index.json + shards.
    mesh: when given, every parameter is created with its logical NamedSharding on this mesh.
    dtype: parameter dtype ('float32', 'bfloat16', 'float16'); also the config's param_dtype.
    tokenizer: optional rlhf_jax Tokenizer; checked against the checkpoint's vocabulary, and an
      appended <pad> gets a (zero) row.

  Returns:
    (config, params): params is the unboxed 'params' collection of LanguageModel(config).

  Raises:
    HFError: one line naming the file (and tensor) that is unsupported, missing or malformed.
  """
  path = os.fspath(path)
  cfg, where = _hf_config(path)
  config = _model_config(path, cfg, where, tokenizer).replace(param_dtype=dtype)
  abstract = state.abstract_params(config, 'lm')
  targets = sharding.logical_shardings(abstract, mesh) if mesh is not None else None
  tensors, params = _Tensors(path), {}
  prefix = families.PREFIXES[cfg.model_type]
  for group in families.groups(config, cfg.model_type, cfg.vocab_size):
    for p, host in zip(group.paths, _read_group(tensors, group, config, prefix, np.dtype(dtype))):
      target = None if targets is None else functools.reduce(operator.getitem, p, targets)
      _nested_set(params, p, _place(host, target))
  if jax.tree.structure(params) != jax.tree.structure(nn.unbox(abstract)):
    raise ValueError(f'{path}: the HF mapping does not cover the model parameters '
                     f'(mapping bug): {jax.tree.structure(params)}')
  return config, params
