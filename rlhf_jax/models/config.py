"""Decoder geometry and architecture switches: one frozen, hashable dataclass.

A `ModelConfig` is static under jit (it is hashed into the compiled program), so it holds only
Python scalars and strings. Flavour presets (GPT-3, Llama, GPT-NeoX) are just field settings; the
geometry table in `config_lib` fills in sizes.
"""
import dataclasses
from typing import Literal, Optional


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the decoder needs to build its parameters and run.

  Attributes:
    vocab_size: embedding rows (already padded to a multiple of 128 for fast matmuls).
    real_vocab_size: ids at or above it are padding rows (or an appended <pad>): their logits are
      masked so they are never sampled and take no probability mass. None: every row is real.
    n_layers, d_model, n_heads, d_head, d_ff: the usual transformer sizes.
    n_kv_heads: key/value heads (grouped-query attention); equal to n_heads for multi-head.
    max_len: context length (positions table size for learned positions, cache length cap).
    norm: 'layernorm' (GPT-3, NeoX) or 'rmsnorm' (Llama).
    norm_eps: epsilon inside the normaliser.
    positions: 'learned' absolute embeddings (GPT-3) or 'rotary' (Llama, NeoX).
    rotary_pct: fraction of each head's dims that rotate (NeoX uses 0.25, Llama 1.0).
    rope_theta: rotary base frequency.
    rope_scaling: None, ('linear', factor) or ('llama3', factor, low_freq_factor,
      high_freq_factor, original_max_len): context-extension schemes of the Llama family.
    mlp: 'gelu' (two matrices, tanh-approximate GELU: GPT-2/3), 'gelu_exact' (erf GELU:
      GPT-NeoX/Pythia) or 'swiglu' (three matrices, Llama).
    use_bias: biases on every dense layer (GPT-3, NeoX).
    qkv_bias: biases on the query/key/value projections only (Qwen2); implied by use_bias.
    parallel_residual: attention and MLP read the same input and are summed (NeoX).
    tie_embeddings: the LM head reuses the input embedding matrix (GPT-3).
    attention_pattern: 'dense', or 'alternating' dense and locally banded layers (GPT-3).
    local_window: band width of the banded layers (tokens attended to, itself included).
    embed_dropout, attn_dropout, resid_dropout: dropout rates; active only when not deterministic.
    dtype: compute dtype ('float32' on CPU, 'bfloat16' on accelerators).
    param_dtype: stored (master) weight dtype.
    remat: rematerialisation policy of each scanned layer: 'none', 'full' (save only layer
      inputs) or 'dots' (save matmul outputs without batch dims, recompute the rest).
    scan_unroll: layers per trip of the layer loop (`lax.scan`'s unroll; n_layers or more
      removes the loop). Compile time grows with it; parameters keep their stacked layout.
  """
  vocab_size: int
  n_layers: int
  d_model: int
  n_heads: int
  d_head: int
  d_ff: int
  max_len: int
  n_kv_heads: Optional[int] = None
  real_vocab_size: Optional[int] = None
  norm: Literal['layernorm', 'rmsnorm'] = 'layernorm'
  norm_eps: float = 1e-5
  positions: Literal['learned', 'rotary'] = 'learned'
  rotary_pct: float = 1.0
  rope_theta: float = 10000.0
  rope_scaling: Optional[tuple] = None
  mlp: Literal['gelu', 'gelu_exact', 'swiglu'] = 'gelu'
  use_bias: bool = True
  qkv_bias: bool = False
  parallel_residual: bool = False
  tie_embeddings: bool = True
  attention_pattern: Literal['dense', 'alternating'] = 'dense'
  local_window: int = 256
  embed_dropout: float = 0.0
  attn_dropout: float = 0.0
  resid_dropout: float = 0.0
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: Literal['none', 'full', 'dots'] = 'none'
  scan_unroll: int = 1

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  def unrolled(self) -> 'ModelConfig':
    """The same model with its layer loop unrolled (see `scan_unroll`)."""
    return self.replace(scan_unroll=self.n_layers)
