"""What every training stage needs: data paths, mesh, tokenizer, initial parameters, exit codes."""
import collections
import functools
import itertools
import pathlib
import sys
from collections.abc import Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np

from rlhf_jax import checkpoint, config_lib, sharding, state
from rlhf_jax.data import pipeline, tokenizers
from rlhf_jax.hf import importer
from rlhf_jax.models import ModelConfig
from rlhf_jax.stages import world


def data_paths(config: ml_collections.ConfigDict) -> dict[str, pathlib.Path]:
  """The world's files in <workdir>/data, with any user-given `config.data.*` path taking over."""
  paths = world.paths(pathlib.Path(config.workdir) / 'data')
  overrides = {'tokenizer': 'tokenizer', 'pretrain': 'pretrain', 'pretrain_valid': 'pretrain_valid',
               'sft_train': 'demonstrations', 'sft_valid': 'demonstrations_valid',
               'rm_demonstrations': 'demonstrations', 'prompts_ppo': 'prompts',
               'prompts_ppo_valid': 'prompts_valid',
               'prompts_sft_valid': 'prompts_valid', 'prompts_rm_valid': 'prompts_valid',
               'prompts_test': 'prompts_valid'}
  for role, field in overrides.items():
    if config.data.get(field):
      paths[role] = pathlib.Path(config.data[field])
  return paths


def mesh(config: ml_collections.ConfigDict):
  """The config's mesh over all devices; a batch it cannot split is a ConfigError."""
  try:
    m = sharding.make_mesh(dict(config.mesh))
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  config_lib.validate_batches(config, sharding.batch_size_multiple(m), jax.process_count())
  return m


def per_process(rows: int) -> int:
  """This process's share of a global batch of `rows` (each process feeds a block of it)."""
  return rows // jax.process_count()


def tokenizer(config: ml_collections.ConfigDict, model: ModelConfig):
  """The run's tokenizer; its vocabulary must fit the model's embedding table."""
  path = data_paths(config)['tokenizer']
  tok = tokenizers.load_tokenizer(path)
  if tok.vocab_size > model.vocab_size:
    raise config_lib.ConfigError(f'tokenizer {path} has {tok.vocab_size} tokens but '
                                 f'model.vocab_size is {model.vocab_size}')
  return tok


def stage_path(workdir: str, name: str) -> pathlib.Path:
  """A stage name ('sft') resolves inside the workdir; anything else is a folder path."""
  return pathlib.Path(workdir) / name if '/' not in name else pathlib.Path(name)


def param_shardings(model: ModelConfig, head: str, mesh):
  """(abstract params carrying their shardings, the NamedShardings), unboxed, from the model's
  logical axis names."""
  return sharding.abstract_sharded(functools.partial(state.init_params, model, head), mesh,
                                   jax.random.key(0))


def load_init_params(init_from: str, workdir: str, model: ModelConfig, head: str, mesh,
                     tokenizer=None):
  """Starting parameters, read straight into their shardings: a completed stage's final (or
  selected) checkpoint, or with 'hf:DIR' a Hugging Face folder whose architecture must be the
  config's geometry. A scalar model takes the source's trunk and a fresh scalar head."""
  if init_from.startswith('hf:'):
    params = _load_hf(init_from[len('hf:'):], model, mesh, tokenizer)
    if head == 'lm':
      return params
    fresh = sharding.create_sharded(
        functools.partial(state.init_params, model, 'scalar'), mesh, jax.random.key(0))[0]
    return state.init_scalar_from_lm(params, fresh)
  abstract, shardings = param_shardings(model, head, mesh)
  roles = {'policy' if head == 'lm' else 'reward': (model, head)}
  return checkpoint.load_params(str(stage_path(workdir, init_from)), abstract, shardings,
                                fingerprint=checkpoint.fingerprint(roles))


def _load_hf(path: str, model: ModelConfig, mesh, tokenizer):
  """LanguageModel params of a HF folder; a geometry other than the config's is a ConfigError."""
  diff = importer.architecture_diff(path, model, tokenizer)
  if diff:
    raise config_lib.ConfigError(f'{path}: the Hugging Face model has ' + ', '.join(diff) +
                                 '; pick the matching geometry (e.g. configs/<stage>.py:gpt2)')
  return importer.load_hf(path, mesh=mesh, dtype=model.param_dtype, tokenizer=tokenizer)[1]


def padded_batches(kind: str, path, tok, config, batch_size: int,
                   k_max: int = 9) -> Iterator[tuple[dict, int]]:
  """(batch, real rows) over every record of `path` in order, the last batch padded.

  Every process reads all of `path` and yields the same global batches: place them with
  `jax.device_put(batch, shardings)`, not as process-local rows. Evaluation must see every
  record, so rows come one by one and the final batch is filled with all-padding rows (valid /
  mask False) that the masked sums of the eval step ignore.
  """
  rows = pipeline.make_dataset(kind, path, tok, batch_size=1, seq_len=config.data.seq_len,
                               prompt_len=config.data.prompt_len, shuffle=False, num_epochs=1,
                               shard_index=0, shard_count=1, k_max=k_max)
  rows = iter(rows)
  while chunk := list(itertools.islice(rows, batch_size)):
    batch = {key: np.concatenate([r[key] for r in chunk]) for key in chunk[0]}
    pad = batch_size - len(chunk)
    if pad:
      batch = {key: np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
               for key, x in batch.items()}
      if 'tokens' in batch:
        batch['tokens'][-pad:] = tok.pad_id
      if 'ranks' in batch:
        batch['ranks'][-pad:] = -1
    yield batch, len(chunk)


def sum_metrics(step: Callable, params, batches: Iterable[dict], rows) -> collections.Counter:
  """Each metric of `step(params, batch)` summed over `batches` on the host (0 for none).

  The batches are global (as `padded_batches` yields them) and placed with `rows`. Eval steps
  return sums with their denominators (an all-padding row adds nothing to either), so a ratio
  of two totals is the exact mean over the records, however they fall into batches.
  """
  total = collections.Counter()
  for batch in batches:
    for name, value in jax.device_get(step(params, jax.device_put(batch, rows))).items():
      total[name] += float(value)
  return total


def train_flops_per_token(model: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4), plus attention.

  Attention's QK^T and AV cost 4 * heads * d_head * seq_len per layer and token forward, halved by
  the causal mask, times 3 with the backward pass.
  """
  per_layer = model.d_model * (2 * model.n_heads * model.d_head + 2 * model.kv_heads * model.d_head
                               + (3 if model.mlp == 'swiglu' else 2) * model.d_ff)
  matmul_weights = model.n_layers * per_layer + model.d_model * model.vocab_size
  attention = 6 * model.n_layers * model.n_heads * model.d_head * seq_len
  return 6 * matmul_weights + attention


def exit_if_stopped(result) -> None:
  """A run ended by a signal has saved a checkpoint; exit non-zero without marking completion."""
  if result.stopped_by is not None:
    sys.exit(128 + result.stopped_by)
