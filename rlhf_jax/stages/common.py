"""What every training stage needs: data paths, mesh, tokenizer, initial parameters, exit codes."""
import pathlib
import sys

import flax.linen as nn
import ml_collections

from rlhf_jax import checkpoint, config_lib, sharding, state
from rlhf_jax.data import tokenizers
from rlhf_jax.models import ModelConfig
from rlhf_jax.stages import world


def data_paths(config: ml_collections.ConfigDict) -> dict[str, pathlib.Path]:
  """The world's files in <workdir>/data, with any user-given `config.data.*` path taking over."""
  paths = world.paths(pathlib.Path(config.workdir) / 'data')
  overrides = {'tokenizer': 'tokenizer', 'pretrain': 'pretrain', 'sft_train': 'demonstrations',
               'prompts_ppo': 'prompts', 'rankings': 'rankings'}
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
  multiple = sharding.batch_size_multiple(m)
  for field in ('batch_size', 'minibatch_size'):
    if field in config and config[field] % multiple:
      raise config_lib.ConfigError(
          f'{field}={config[field]} is not divisible by the mesh batch axes (data x fsdp = '
          f'{multiple})')
  return m


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
  """(abstract params, their NamedShardings), unboxed, from the model's logical axis names."""
  boxed = state.abstract_params(model, head)
  return nn.unbox(boxed), nn.unbox(sharding.logical_shardings(boxed, mesh))


def load_init_params(init_from: str, workdir: str, model: ModelConfig, head: str, mesh):
  """Parameters of a completed stage (its final checkpoint), read straight into their shardings."""
  abstract, shardings = param_shardings(model, head, mesh)
  roles = {'policy' if head == 'lm' else 'reward': (model, head)}
  return checkpoint.load_params(str(stage_path(workdir, init_from)), abstract, shardings,
                                fingerprint=checkpoint.fingerprint(roles))


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
