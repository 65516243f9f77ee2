"""Model geometries, the base run config every stage extends, and config validation.

Geometries follow GPT-3 Table 2.1 (Brown et al. 2020) for the paper's models; InstructGPT's
1.3B, 6B and 175B are GPT-3 XL, 6.7B and 175B (instructgpt_facts.md 1.0, 1.9). Sizes are fixed
here once; stage configs pick one by name and may override any field from the command line.
"""
import dataclasses
import importlib.util
import math
import pathlib
import types

import ml_collections

from rlhf_jax.models.config import ModelConfig

GPT3_VOCAB = 50257  # GPT-2/GPT-3 BPE vocabulary.
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'  # the shipped stage configs


class ConfigError(ValueError):
  """A configuration that cannot work; its message is one line naming the field."""


def pad_vocab(n: int, multiple: int = 128) -> int:
  return int(math.ceil(n / multiple) * multiple)


def _gpt3(n_layers: int, d_model: int, n_heads: int, **kw) -> ModelConfig:
  d_head = d_model // n_heads
  fields = dict(vocab_size=pad_vocab(GPT3_VOCAB), real_vocab_size=GPT3_VOCAB, n_layers=n_layers,
                d_model=d_model,
                n_heads=n_heads, d_head=d_head, d_ff=4 * d_model, max_len=2048)
  fields.update(kw)
  return ModelConfig(**fields)


def _llama(n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab, max_len, **kw) -> ModelConfig:
  fields = dict(vocab_size=pad_vocab(vocab), real_vocab_size=vocab, n_layers=n_layers,
                d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_model // n_heads, d_ff=d_ff, max_len=max_len,
                norm='rmsnorm', positions='rotary', mlp='swiglu', use_bias=False,
                tie_embeddings=False)
  fields.update(kw)
  return ModelConfig(**fields)


GEOMETRIES: dict[str, ModelConfig] = {
    # CPU presets (the same sizes the performance workload of experiments/bench names).
    'tiny': _gpt3(4, 128, 4, vocab_size=512, real_vocab_size=None, d_ff=512, max_len=256),
    'small': _gpt3(6, 384, 6, vocab_size=4096, real_vocab_size=None, d_ff=1536, max_len=512),
    # The mini world's reward model: tiny's vocabulary (it scores tiny's tokens) with 3.8x its
    # parameters (3.4M), as the paper's 6B RM is 4.6x its 1.3B policy (configs/rm.py says why).
    'tiny-rm': _gpt3(4, 256, 8, vocab_size=512, real_vocab_size=None, d_ff=1024, max_len=256),
    # GPT-3 Table 2.1. Where the printed table is inconsistent we keep d_head = 128 and
    # d_model as printed for XL (16 heads, since 24 x 128 != 2048) and take d_model = 5120 for
    # 13B (5140 is not divisible by 40 heads; 40 x 128 = 5120).
    '125m': _gpt3(12, 768, 12),
    '350m': _gpt3(24, 1024, 16),
    '760m': _gpt3(24, 1536, 16),
    '1.3b': _gpt3(24, 2048, 16),
    '2.7b': _gpt3(32, 2560, 32),
    '6b': _gpt3(32, 4096, 32),
    '13b': _gpt3(40, 5120, 40),
    '175b': _gpt3(96, 12288, 96),
    # Llama-style presets: the tiny/small CPU sizes with Llama switches, and Llama 2 7B /
    # Llama 3 8B shapes for fit checks of imported models.
    'llama-tiny': _llama(4, 128, 4, 2, 384, 512, 256, real_vocab_size=None),
    'llama-small': _llama(6, 384, 6, 2, 1024, 4096, 512, real_vocab_size=None),
    'llama2-7b': _llama(32, 4096, 32, 32, 11008, 32000, 4096, norm_eps=1e-5),
    'llama3-8b': _llama(32, 4096, 32, 8, 14336, 128256, 8192, norm_eps=1e-5, rope_theta=500000.0,
                        rope_scaling=('llama3', 8.0, 1.0, 4.0, 8192)),
}
# Public checkpoints the recipes start from (shapes as their Hugging Face config.json files):
# GPT-2 (124M) and Pythia-1B (GPT-NeoX: parallel residual, 25% rotary dims, exact GELU, untied).
GEOMETRIES['gpt2'] = _gpt3(12, 768, 12, max_len=1024)
GEOMETRIES['pythia-1b'] = _gpt3(16, 2048, 8, vocab_size=50304, real_vocab_size=None,
                                positions='rotary', rotary_pct=0.25, parallel_residual=True,
                                mlp='gelu_exact', tie_embeddings=False)
GEOMETRIES['6.7b'] = GEOMETRIES['6b']
GEOMETRIES['xl'] = GEOMETRIES['1.3b']

# n_params printed in GPT-3 Table 2.1, for the 3% check in the tests.
GPT3_PAPER_PARAMS = {'125m': 125e6, '350m': 350e6, '760m': 760e6, '1.3b': 1.3e9, '2.7b': 2.7e9,
                     '6b': 6.7e9, '13b': 13.0e9, '175b': 175.0e9}


def model_config_dict(geometry: str) -> ml_collections.ConfigDict:
  """The geometry's fields as a ConfigDict, so each is overridable (`--config.model.d_ff=...`)."""
  if geometry not in GEOMETRIES:
    raise ConfigError(f'unknown geometry {geometry!r}; known: {", ".join(sorted(GEOMETRIES))}')
  fields = dataclasses.asdict(GEOMETRIES[geometry])
  fields['geometry'] = geometry
  return ml_collections.ConfigDict(fields)


def to_model_config(model: ml_collections.ConfigDict) -> ModelConfig:
  fields = {f.name: model[f.name] for f in dataclasses.fields(ModelConfig) if f.name in model}
  if isinstance(fields.get('rope_scaling'), list):
    fields['rope_scaling'] = tuple(fields['rope_scaling'])
  return ModelConfig(**fields)


def default_workdir(geometry: str) -> str:
  """Each pipeline geometry runs in its own workdir by default, so a run at one geometry never
  finds another's stages complete."""
  return 'runs/mini' if geometry == 'tiny' else f'runs/mini-{geometry}'


def base_config(geometry: str = 'tiny') -> ml_collections.ConfigDict:
  """Fields every stage shares, named the same everywhere."""
  c = ml_collections.ConfigDict()
  c.stage = ''
  c.workdir = default_workdir(geometry)
  c.seed = 0
  c.model = model_config_dict(geometry)
  # The file this config was loaded from (set by `load_config` and main, whoever the file
  # extends), and the configs of the stages it reads, run when their folders are missing: a
  # --config spec with '{stage}' and '{geometry}' to fill; empty: the `{stage}.py` files beside
  # config_file (the shipped ones for a config built in code), so a copied folder runs together.
  c.config_file = ''
  c.stage_configs = ''
  # Mesh axis sizes; one may be -1 (all remaining devices).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.total_steps = 0  # > 0 overrides epochs.
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 0
  # A W&B project switches W&B logging on: each stage a run named '<workdir>/<stage>' (metrics,
  # the resolved config, the summary). WANDB_MODE=offline logs without a network.
  c.wandb_project = ''
  # Stop when the loss or gradient norm of a step exceeds this many times the running mean of
  # its magnitude: a finite blow-up the NaN check misses (loop.Schedule). 0 = off.
  c.divergence = 0.0
  # Training steps (sft, rm, the PPO update) differentiate the layers unrolled on the CPU
  # presets; forward-only passes (sampling, scoring, validation) keep the layer loop. Either is
  # the same math; on small models on CPU each is the faster (experiments/bench/README.md).
  c.unroll_update_layers = geometry in CPU_PRESETS
  return c


def training_model(model: ModelConfig, config: ml_collections.ConfigDict) -> ModelConfig:
  """The geometry a stage's training step differentiates: unrolled if the config says so."""
  return model.unrolled() if config.unroll_update_layers else model


def validate_model(m: ModelConfig) -> None:
  """Raises ConfigError for a geometry that cannot be built."""
  def need(ok, msg):
    if not ok:
      raise ConfigError(f'model: {msg}')
  # Sizes first: the checks below divide by them.
  for name in ('vocab_size', 'n_layers', 'd_model', 'n_heads', 'd_head', 'd_ff', 'max_len'):
    need(getattr(m, name) > 0, f'{name}={getattr(m, name)} must be positive')
  need(m.n_kv_heads is None or m.n_kv_heads > 0, f'n_kv_heads={m.n_kv_heads} must be positive')
  need(m.n_heads % m.kv_heads == 0, f'n_heads={m.n_heads} not divisible by n_kv_heads={m.kv_heads}')
  need(m.positions == 'learned' or m.d_head * m.rotary_pct % 2 == 0,
       f'rotary dims d_head*rotary_pct={m.d_head * m.rotary_pct} must be even')
  need(m.dtype in ('float32', 'bfloat16', 'float16'), f'dtype {m.dtype!r} unknown')
  need(m.param_dtype in ('float32', 'bfloat16'), f'param_dtype {m.param_dtype!r} unknown')
  need(m.local_window > 0, f'local_window={m.local_window} must be positive')
  need(m.remat in ('none', 'full', 'dots'), f'remat {m.remat!r} unknown')
  need(m.scan_unroll >= 1, f'scan_unroll={m.scan_unroll} must be at least 1')
  need(m.mlp in ('gelu', 'gelu_exact', 'swiglu'), f'mlp {m.mlp!r} unknown')


PAPER_GEOMETRIES = ('1.3b', '6b', '175b')


def reward_geometry(geometry: str) -> str:
  """The reward model's geometry in a pipeline whose policy is `geometry`.

  The paper trains one 6B RM for every policy size (§3.5): 4.6x the 1.3B policy. The mini world
  gives its tiny policy a 3.8x RM ('tiny-rm'); other presets use the policy's geometry.
  """
  if geometry in PAPER_GEOMETRIES:
    return '6b'
  return {'tiny': 'tiny-rm'}.get(geometry, geometry)


def optimizer_config(lr: float, schedule: str = 'cosine', final_lr_frac: float = 0.1,
                     warmup_steps: int = 0) -> ml_collections.ConfigDict:
  """Adam with the paper's betas (App. C preamble: beta1 0.9, beta2 0.95).

  The paper does not state eps, weight decay or gradient clipping; we keep GPT-3's
  eps 1e-8 and global-norm clip 1.0 and no weight decay for fine-tuning.
  """
  return ml_collections.ConfigDict(dict(
      lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=1.0,
      schedule=schedule, final_lr_frac=final_lr_frac, warmup_steps=warmup_steps,
      warmup_start_frac=0.0))


CPU_PRESETS = ('tiny', 'tiny-rm', 'small', 'llama-tiny', 'llama-small')
# InstructGPT-mini prompts are at most ~64 tokens and demonstrations ~40 (see data/card.json),
# so the CPU presets train on 128-token sequences instead of their full context.
MINI_SEQ_LEN = 128


def data_config(geometry: str) -> ml_collections.ConfigDict:
  """Lengths and sources. Empty paths mean the InstructGPT-mini world's files in <workdir>/data.

  Paper (App. C preamble): 2k context, prompts up to 1k tokens, responses up to 1k.
  """
  seq_len = MINI_SEQ_LEN if geometry in CPU_PRESETS else GEOMETRIES[geometry].max_len
  return ml_collections.ConfigDict(dict(
      seq_len=seq_len, prompt_len=seq_len // 2, response_len=seq_len // 2,
      world_scale=0.05, tokenizer='', pretrain='', pretrain_valid='', demonstrations='',
      demonstrations_valid='', rankings='', rankings_valid='', prompts='', prompts_valid=''))


def geometry_arg(arg: str | None, default: str = 'tiny') -> str:
  """`get_config(arg)` helper: the geometry name selected after the colon, validated."""
  name = arg or default
  if name not in GEOMETRIES:
    raise ConfigError(f'unknown geometry {name!r}; known: {", ".join(sorted(GEOMETRIES))}')
  return name


def topology_chips(topology: str) -> int:
  """Chips (devices) of a TPU slice named as jax.experimental.topologies does: 'v5p:4x4x8': 128."""
  try:
    return math.prod(int(n) for n in topology.split(':')[1].split('x'))
  except (IndexError, ValueError):
    raise ConfigError(f"topology {topology!r}: expected a name like 'v5p:4x4x4'") from None


def mesh_for(geometry: str) -> ml_collections.ConfigDict:
  """Default mesh: pure data parallel on small models, FSDP (+ tensor at 175B) on paper sizes."""
  if geometry == '175b':
    return ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=8))
  if geometry in ('1.3b', '6b', '2.7b', '6.7b', '13b', 'llama2-7b', 'llama3-8b'):
    return ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def sibling_config(config_file: str, name: str) -> types.ModuleType:
  """Imports configs/<name>.py beside `config_file`, so one config can extend another."""
  path = pathlib.Path(config_file).with_name(f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'rlhf_jax_configs.{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


LM_STAGES = ('pretrain', 'pretrain_rm', 'sft', 'sft_rm', 'sft_init', 'sample')
PPO_STAGES = ('ppo', 'ppo_ptx')


def model_roles(config: ml_collections.ConfigDict) -> dict[str, tuple[ModelConfig, str]]:
  """The models a stage holds: role -> (geometry, head), head 'lm' or 'scalar'."""
  stage = config.stage
  if stage in LM_STAGES:
    return {'policy': (to_model_config(config.model), 'lm')}
  if stage == 'rm':
    return {'reward': (to_model_config(config.model), 'scalar')}
  if stage in PPO_STAGES:
    policy, critic = to_model_config(config.model), to_model_config(config.reward_model)
    return {'policy': (policy, 'lm'), 'reference': (policy, 'lm'),
            'reward': (critic, 'scalar'), 'value': (critic, 'scalar')}
  return {}


# Stage fields that are sizes or periods (at least 1), and counts where 0 means "derive it" or
# "never" (total_steps 0: from epochs; eval_every / checkpoint_every 0: only at the end).
POSITIVE_FIELDS = ('batch_size', 'minibatch_size', 'log_every', 'episodes', 'ppo_epochs',
                   'rollout_chunks', 'ptx_chunks')
COUNT_FIELDS = ('total_steps', 'epochs', 'eval_every', 'checkpoint_every')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a stage config before any compilation; raises ConfigError with a one-line message."""
  if not config.stage:
    raise ConfigError('stage: empty; use one of the files in configs/')
  for role, (model, _) in model_roles(config).items():
    try:
      validate_model(model)
    except ConfigError as e:
      raise ConfigError(f'{role} {e}') from None
  for field in POSITIVE_FIELDS:
    if field in config and config[field] < 1:
      raise ConfigError(f'{field}={config[field]} must be at least 1')
  for field in COUNT_FIELDS:
    if field in config and config[field] < 0:
      raise ConfigError(f'{field}={config[field]} must not be negative')
  if config.get('divergence', 0.0) and not config.divergence > 1:
    raise ConfigError(f'divergence={config.divergence} must be 0 (off) or above 1: it is a '
                      'multiple of the running mean')
  for axis in ('data', 'fsdp', 'tensor'):
    if config.mesh[axis] == 0 or config.mesh[axis] < -1:
      raise ConfigError(f'mesh.{axis}={config.mesh[axis]} must be positive or -1')
  if list(config.mesh.values()).count(-1) > 1:
    raise ConfigError(f'mesh {dict(config.mesh)}: at most one axis may be -1 (all remaining '
                      'devices)')
  if 'k_max' in config and config.k_max < 2:
    raise ConfigError(f'k_max={config.k_max} must be at least 2: a ranking orders two or more '
                      'completions')
  if 'k_min' in config and not 2 <= config.k_min <= config.k_max:
    raise ConfigError(f'k_min={config.k_min}, k_max={config.k_max}: need 2 <= k_min <= k_max')
  data = config.get('data')
  if data is not None and 'prompt_len' in data:
    if data.prompt_len + data.response_len > config.model.max_len:
      raise ConfigError(f'data: prompt_len {data.prompt_len} + response_len {data.response_len} '
                        f'exceeds the context length model.max_len={config.model.max_len}')
  if config.stage in PPO_STAGES:
    _validate_ppo_batches(config)


def _validate_ppo_batches(config: ml_collections.ConfigDict) -> None:
  """An iteration's episodes split into whole minibatches and rollout chunks, and an update's
  pretraining rows into whole ptx chunks."""
  for field in ('minibatch_size', 'rollout_chunks'):
    if config.batch_size % config[field]:
      raise ConfigError(f'batch_size={config.batch_size} is not a multiple of '
                        f'{field}={config[field]}')
  ptx_rows = config.ptx_per_episode * config.minibatch_size
  if ptx_rows % config.ptx_chunks:
    raise ConfigError(f'ptx_per_episode * minibatch_size = {ptx_rows} pretraining rows are not '
                      f'a multiple of ptx_chunks={config.ptx_chunks}')


def validate_batches(config: ml_collections.ConfigDict, batch_multiple: int,
                     processes: int = 1) -> None:
  """Every batch the stage feeds splits over a mesh whose batch axes have `batch_multiple`
  devices (data x fsdp) and over `processes` processes; raises ConfigError otherwise."""
  # PPO's pretraining rows per update (ptx_per_episode * minibatch_size) split whenever the
  # minibatch does.
  sizes = {field: config[field] for field in ('batch_size', 'minibatch_size') if field in config}
  for field, size in sizes.items():
    if size % batch_multiple:
      raise ConfigError(f'{field}={size} is not divisible by the mesh batch axes '
                        f'(data x fsdp = {batch_multiple})')
    if size % processes:
      raise ConfigError(f'{field}={size} is not divisible by the {processes} processes')


def flat_fields(tree, prefix: str = '') -> dict:
  """A nested config dict's leaves by dotted name ('model.geometry'), in the tree's order."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_fields(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def missing_config(path: str) -> ConfigError:
  return ConfigError(f'{path}: no such config file (relative paths start in the current folder; '
                     f'the shipped configs are in {CONFIG_DIR})')


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:arg]' the way `--config=` does (for tests and tools)."""
  path, _, arg = spec.partition(':')
  if not pathlib.Path(path).is_file():
    raise missing_config(path)
  module = sibling_config(path, pathlib.Path(path).stem)
  return loaded_from(module.get_config(arg or None), path)


def loaded_from(config: ml_collections.ConfigDict, config_file: str) -> ml_collections.ConfigDict:
  """`config` with its `config_file` set to `config_file` (a config extending another one,
  loaded inside its get_config, is the file loaded last's)."""
  if 'config_file' in config:
    config.config_file = str(pathlib.Path(config_file).resolve())
  return config
