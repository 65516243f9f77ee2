"""Hugging Face <-> rlhf_jax: architecture families, config conversion, tensor layout mapping.

Shared by `importer` (load_hf) and `exporter` (export_hf). A family is one HF `model_type`:
gpt2, gpt_neox (Pythia), llama (Llama 2/3) and qwen2. Each maps onto `ModelConfig` switches and a
list of `Group`s: one or more of our parameters <-> one or more HF tensors, with the layout
change both ways. Layer tensors are named with '{i}' and our parameters carry the scanned
leading layers axis, which the callers stack / unstack.

Layouts: HF `nn.Linear` stores [out, in] (our kernels are [in, out...]); GPT-2's `Conv1D` stores
[in, out] and fuses q, k, v along `out`; NeoX fuses them per head ([heads, 3, d_head] along
`out`). Rotary needs no permutation: our decoder uses HF's rotate_half layout.
"""
import dataclasses
import math
from collections.abc import Callable

import numpy as np

from rlhf_jax.hf import HFError
from rlhf_jax.models.config import ModelConfig

FAMILIES = ('gpt2', 'gpt_neox', 'llama', 'qwen2')
LM_CLASSES = {'gpt2': 'GPT2LMHeadModel', 'gpt_neox': 'GPTNeoXForCausalLM',
              'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}
SCALAR_CLASSES = {'gpt2': 'GPT2ForSequenceClassification',
                  'gpt_neox': 'GPTNeoXForSequenceClassification',
                  'llama': 'LlamaForSequenceClassification',
                  'qwen2': 'Qwen2ForSequenceClassification'}
# Base-model prefix of the tensor names that transformers writes for each family.
PREFIXES = {'gpt2': 'transformer.', 'gpt_neox': 'gpt_neox.', 'llama': 'model.', 'qwen2': 'model.'}
# Activations our tanh-approximated GELU computes exactly.
_TANH_GELUS = ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast')


@dataclasses.dataclass(frozen=True)
class Group:
  """Our parameters `paths` <-> HF tensors `names`, converted by `to_ours` / `to_hf`.

  Attributes:
    paths: our parameter paths (under `params`), e.g. ('trunk', 'layers', 'attn', 'query',
      'kernel'); a 'layers' path is per layer here (no leading layers axis).
    names: HF tensor names; '{i}' stands for the layer index.
    shapes: the HF shapes `names` must have.
    to_ours: HF arrays (in `names` order) -> tuple of our arrays (in `paths` order).
    to_hf: our arrays -> tuple of HF arrays.
  """
  paths: tuple[tuple[str, ...], ...]
  names: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  to_ours: Callable[..., tuple[np.ndarray, ...]]
  to_hf: Callable[..., tuple[np.ndarray, ...]]

  @property
  def per_layer(self) -> bool:
    return 'layers' in self.paths[0]


def _path(name: str) -> tuple[str, ...]:
  return tuple(name.split('/'))


def _vector(path: str, name: str, shape: tuple[int, ...]) -> Group:
  """Biases and norm scales: same data, our shape may split heads."""
  return Group((_path(path),), (name,), ((math.prod(shape),),),
               lambda w: (w.reshape(shape),), lambda x: (x.reshape(-1),))


def _linear(path: str, name: str, shape: tuple[int, ...], n_in: int = 1,
            conv1d: bool = False) -> Group:
  """A dense kernel of our `shape` (first n_in dims are inputs) <-> Linear [out, in] or Conv1D."""
  d_in, d_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
  if conv1d:
    return Group((_path(path),), (name,), ((d_in, d_out),),
                 lambda w: (w.reshape(shape),), lambda x: (x.reshape(d_in, d_out),))
  return Group((_path(path),), (name,), ((d_out, d_in),),
               lambda w: (w.T.reshape(shape),), lambda x: (x.reshape(d_in, d_out).T,))


def _pad_rows(w: np.ndarray, rows: int) -> np.ndarray:
  # Rows past the checkpoint's vocabulary (vocab padding, a tokenizer's appended <pad>) are 0.
  return np.concatenate([w, np.zeros((rows - w.shape[0],) + w.shape[1:], w.dtype)])


def _embedding(path: str, name: str, hf_rows: int, c: ModelConfig, transpose: bool) -> Group:
  """Token embedding [V, D] (or our LM head kernel [D, V] when `transpose`); pads V on import and
  keeps the first `hf_rows` rows on export."""
  def to_ours(w):
    w = _pad_rows(w, c.vocab_size)
    return (w.T if transpose else w,)
  return Group((_path(path),), (name,), ((hf_rows, c.d_model),), to_ours,
               lambda x: (x[:, :hf_rows].T if transpose else x[:hf_rows],))


def _fused_qkv(path: str, name: str, c: ModelConfig, kernel: bool, neox: bool) -> Group:
  """GPT-2 c_attn ([q | k | v] along out, Conv1D) or NeoX query_key_value ([H, 3, Dh] along out)."""
  d, h, dh = c.d_model, c.n_heads, c.d_head
  paths = tuple(_path(f'{path}/{p}/{"kernel" if kernel else "bias"}')
                for p in ('query', 'key', 'value'))
  if neox:
    def to_ours(w):  # [H*3*Dh, D] or [H*3*Dh]
      w = w.reshape(h, 3, dh, -1)
      return tuple(w[:, j].transpose(2, 0, 1) if kernel else w[:, j, :, 0] for j in range(3))

    def to_hf(*qkv):
      parts = [x.transpose(1, 2, 0) if kernel else x[..., None] for x in qkv]  # [H, Dh, D|1]
      stacked = np.stack(parts, axis=1)  # [H, 3, Dh, D|1]
      return (stacked.reshape(3 * h * dh, d) if kernel else stacked.reshape(-1),)
  else:
    def to_ours(w):  # [D, 3*H*Dh] or [3*H*Dh]
      return tuple(p.reshape(w.shape[:-1] + (h, dh)) for p in np.split(w, 3, axis=-1))

    def to_hf(*qkv):
      return (np.concatenate([x.reshape(x.shape[:-2] + (h * dh,)) for x in qkv], axis=-1),)
  shape = (3 * h * dh, d) if neox and kernel else (d, 3 * h * dh) if kernel else (3 * h * dh,)
  return Group(paths, (name,), (shape,), to_ours, to_hf)


def _same(path: str, name: str, shape: tuple[int, ...]) -> Group:
  return Group((_path(path),), (name,), (shape,), lambda w: (w,), lambda x: (x,))


def _norm(ours: str, hf: str, c: ModelConfig) -> list[Group]:
  """A norm's scale, and its bias when it has one (LayerNorm with use_bias)."""
  out = [_same(f'{ours}/scale', f'{hf}.weight', (c.d_model,))]
  if c.norm == 'layernorm' and c.use_bias:
    out.append(_same(f'{ours}/bias', f'{hf}.bias', (c.d_model,)))
  return out


def _gpt2_layer(c: ModelConfig, p: str) -> list[Group]:
  a, m = 'trunk/layers/attn', 'trunk/layers/mlp'
  return [*_norm('trunk/layers/ln_attn', f'{p}ln_1', c),
          _fused_qkv(a, f'{p}attn.c_attn.weight', c, kernel=True, neox=False),
          _fused_qkv(a, f'{p}attn.c_attn.bias', c, kernel=False, neox=False),
          _linear(f'{a}/out/kernel', f'{p}attn.c_proj.weight', (c.n_heads, c.d_head, c.d_model),
                  n_in=2, conv1d=True),
          _same(f'{a}/out/bias', f'{p}attn.c_proj.bias', (c.d_model,)),
          *_norm('trunk/layers/ln_mlp', f'{p}ln_2', c),
          _linear(f'{m}/wi/kernel', f'{p}mlp.c_fc.weight', (c.d_model, c.d_ff), conv1d=True),
          _same(f'{m}/wi/bias', f'{p}mlp.c_fc.bias', (c.d_ff,)),
          _linear(f'{m}/wo/kernel', f'{p}mlp.c_proj.weight', (c.d_ff, c.d_model), conv1d=True),
          _same(f'{m}/wo/bias', f'{p}mlp.c_proj.bias', (c.d_model,))]


def _neox_layer(c: ModelConfig, p: str) -> list[Group]:
  a, m = 'trunk/layers/attn', 'trunk/layers/mlp'
  return [*_norm('trunk/layers/ln_attn', f'{p}input_layernorm', c),
          _fused_qkv(a, f'{p}attention.query_key_value.weight', c, kernel=True, neox=True),
          _fused_qkv(a, f'{p}attention.query_key_value.bias', c, kernel=False, neox=True),
          _linear(f'{a}/out/kernel', f'{p}attention.dense.weight',
                  (c.n_heads, c.d_head, c.d_model), n_in=2),
          _same(f'{a}/out/bias', f'{p}attention.dense.bias', (c.d_model,)),
          *_norm('trunk/layers/ln_mlp', f'{p}post_attention_layernorm', c),
          _linear(f'{m}/wi/kernel', f'{p}mlp.dense_h_to_4h.weight', (c.d_model, c.d_ff)),
          _same(f'{m}/wi/bias', f'{p}mlp.dense_h_to_4h.bias', (c.d_ff,)),
          _linear(f'{m}/wo/kernel', f'{p}mlp.dense_4h_to_h.weight', (c.d_ff, c.d_model)),
          _same(f'{m}/wo/bias', f'{p}mlp.dense_4h_to_h.bias', (c.d_model,))]


def _llama_layer(c: ModelConfig, p: str) -> list[Group]:
  a, m = 'trunk/layers/attn', 'trunk/layers/mlp'
  heads = {'query': ('q_proj', c.n_heads), 'key': ('k_proj', c.kv_heads),
           'value': ('v_proj', c.kv_heads)}
  out = [*_norm('trunk/layers/ln_attn', f'{p}input_layernorm', c),
         *_norm('trunk/layers/ln_mlp', f'{p}post_attention_layernorm', c),
         _linear(f'{a}/out/kernel', f'{p}self_attn.o_proj.weight',
                 (c.n_heads, c.d_head, c.d_model), n_in=2)]
  for ours, (hf, n) in heads.items():
    out.append(_linear(f'{a}/{ours}/kernel', f'{p}self_attn.{hf}.weight', (c.d_model, n, c.d_head)))
    if c.use_bias or c.qkv_bias:
      out.append(_vector(f'{a}/{ours}/bias', f'{p}self_attn.{hf}.bias', (n, c.d_head)))
  mlp = {'wi_gate': ('gate_proj', c.d_model, c.d_ff), 'wi_up': ('up_proj', c.d_model, c.d_ff),
         'wo': ('down_proj', c.d_ff, c.d_model)}
  for ours, (hf, d_in, d_out) in mlp.items():
    out.append(_linear(f'{m}/{ours}/kernel', f'{p}mlp.{hf}.weight', (d_in, d_out)))
    if c.use_bias:
      out.append(_same(f'{m}/{ours}/bias', f'{p}mlp.{hf}.bias', (d_out,)))
  if c.use_bias:
    out.append(_same(f'{a}/out/bias', f'{p}self_attn.o_proj.bias', (c.d_model,)))
  return out


# family: (layer groups, layer prefix, embedding, final norm, untied LM head) below PREFIXES.
_LAYOUT = {
    'gpt2': (_gpt2_layer, 'h.{i}.', 'wte.weight', 'ln_f', 'lm_head.weight'),
    'gpt_neox': (_neox_layer, 'layers.{i}.', 'embed_in.weight', 'final_layer_norm',
                 'embed_out.weight'),
    'llama': (_llama_layer, 'layers.{i}.', 'embed_tokens.weight', 'norm', 'lm_head.weight'),
    'qwen2': (_llama_layer, 'layers.{i}.', 'embed_tokens.weight', 'norm', 'lm_head.weight'),
}


def groups(c: ModelConfig, family: str, hf_vocab: int, lm_head: bool = True) -> list[Group]:
  """Every Group of a family's LM (trunk, plus the untied LM head when `lm_head`).

  Args:
    c: our config (its vocab_size may exceed hf_vocab: padded rows are zero on import).
    family: one of FAMILIES.
    hf_vocab: embedding rows of the HF checkpoint (our rows past it are dropped on export).
    lm_head: include the untied LM head (False for sequence-classification models).
  """
  layer_fn, layer_prefix, embed, final_norm, head = _LAYOUT[family]
  base = PREFIXES[family]
  out = [_embedding('trunk/embed/embedding', base + embed, hf_vocab, c, transpose=False),
         *layer_fn(c, base + layer_prefix), *_norm('trunk/ln_f', base + final_norm, c)]
  if c.positions == 'learned':
    out.append(_same('trunk/pos_embed/embedding', base + 'wpe.weight', (c.max_len, c.d_model)))
  if lm_head and not c.tie_embeddings:
    out.append(_embedding('lm_head/kernel', head, hf_vocab, c, transpose=True))
  return out


def _rope_from_hf(cfg, where: str) -> dict:
  """positions/rope fields of a rotary family from transformers' standardised rope_parameters."""
  rp = dict(cfg.rope_parameters or {})
  kind = rp.get('rope_type', 'default')
  if kind == 'default':
    scaling = None
  elif kind == 'linear':
    scaling = ('linear', float(rp['factor']))
  elif kind == 'llama3':
    scaling = ('llama3', float(rp['factor']), float(rp['low_freq_factor']),
               float(rp['high_freq_factor']), int(rp['original_max_position_embeddings']))
  else:
    raise HFError(f'{where}: rope_type {kind!r} is not supported (default, linear, llama3)')
  return dict(positions='rotary', rope_theta=float(rp.get('rope_theta', 10000.0)),
              rotary_pct=float(rp.get('partial_rotary_factor', 1.0)), rope_scaling=scaling)


def _gelu(act: str, where: str) -> dict:
  if act == 'gelu':
    return dict(mlp='gelu_exact')  # Pythia
  if act not in _TANH_GELUS:
    raise HFError(f'{where}: activation {act!r} is not supported (gelu, {", ".join(_TANH_GELUS)})')
  return dict(mlp='gelu')


def _require(ok: bool, where: str, what: str) -> None:
  if not ok:
    raise HFError(f'{where}: {what} is not supported')


def config_from_hf(cfg, where: str) -> ModelConfig:
  """Our config of a transformers config (vocab_size is the checkpoint's, not yet padded).

  Args:
    cfg: a transformers PretrainedConfig whose model_type is in FAMILIES.
    where: the config.json path, for error messages.
  """
  family = cfg.model_type
  d, h = cfg.hidden_size, cfg.num_attention_heads
  common = dict(vocab_size=cfg.vocab_size, n_layers=cfg.num_hidden_layers, d_model=d,
                n_heads=h, tie_embeddings=bool(cfg.tie_word_embeddings))
  if family == 'gpt2':
    _require(cfg.scale_attn_weights and not cfg.scale_attn_by_inverse_layer_idx, where,
             'GPT-2 attention scaling other than 1/sqrt(d_head)')
    _require(not cfg.add_cross_attention, where, 'cross-attention')
    return ModelConfig(**common, d_head=d // h, d_ff=cfg.n_inner or 4 * d, max_len=cfg.n_positions,
                       norm_eps=cfg.layer_norm_epsilon, **_gelu(cfg.activation_function, where))
  rope = _rope_from_hf(cfg, where)
  if family == 'gpt_neox':
    _require(cfg.attention_bias, where, 'GPT-NeoX without attention biases')
    return ModelConfig(**common, d_head=d // h, d_ff=cfg.intermediate_size,
                       max_len=cfg.max_position_embeddings, norm_eps=cfg.layer_norm_eps,
                       parallel_residual=bool(cfg.use_parallel_residual), **rope,
                       **_gelu(cfg.hidden_act, where))
  _require(cfg.hidden_act == 'silu', where, f'hidden_act {cfg.hidden_act!r}')
  _require(rope['rotary_pct'] == 1.0, where, 'partial rotary in the Llama family')
  if family == 'qwen2':
    _require(not cfg.use_sliding_window, where, 'sliding-window attention')
    bias = dict(use_bias=False, qkv_bias=True)
  else:
    _require(cfg.attention_bias == cfg.mlp_bias, where, 'attention_bias != mlp_bias')
    bias = dict(use_bias=bool(cfg.attention_bias))
  return ModelConfig(**common, d_head=getattr(cfg, 'head_dim', None) or d // h,
                     n_kv_heads=cfg.num_key_value_heads, d_ff=cfg.intermediate_size,
                     max_len=cfg.max_position_embeddings, norm='rmsnorm',
                     norm_eps=cfg.rms_norm_eps, mlp='swiglu', **rope, **bias)


def export_family(c: ModelConfig) -> str:
  """The HF family whose architecture computes exactly what `c` does; HFError naming the
  switch that none of them has."""
  def need(ok, what):
    if not ok:
      raise HFError(f'cannot export to Hugging Face: {what}')
  need(c.attention_pattern == 'dense', "attention_pattern='alternating' (GPT-3's banded layers) "
       'has no transformers equivalent')
  mha = c.kv_heads == c.n_heads and c.n_heads * c.d_head == c.d_model
  if c.norm == 'layernorm':
    need(c.mlp in ('gelu', 'gelu_exact') and c.use_bias and mha, 'LayerNorm models need a GELU '
         'mlp, use_bias and n_heads * d_head == d_model without grouped-query attention '
         '(GPT-2 / GPT-NeoX)')
    if c.positions == 'learned':
      need(not c.parallel_residual, 'learned positions with parallel_residual')
      return 'gpt2'
    return 'gpt_neox'
  need(c.positions == 'rotary' and c.mlp == 'swiglu' and c.rotary_pct == 1.0,
       'RMSNorm models need rotary positions (rotary_pct=1) and mlp=swiglu (Llama / Qwen2)')
  need(not c.parallel_residual, 'parallel_residual with RMSNorm')
  if c.qkv_bias and not c.use_bias:
    return 'qwen2'
  return 'llama'
