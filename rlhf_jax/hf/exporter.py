"""Write rlhf_jax params as a Hugging Face folder that transformers loads.

    export_hf(params, config, 'out/policy', tokenizer_dir='data/tokenizer')          # policies
    export_hf(params, config, 'out/rm', head='scalar', tokenizer_dir='data/tokenizer')  # RM, value

The architecture is the one whose computation equals the config's (`families.export_family`): GPT-2
(learned positions), GPT-NeoX (LayerNorm + rotary), Llama (RMSNorm + SwiGLU) or Qwen2 (q/k/v biases
only). Policies load with AutoModelForCausalLM; scalar models as <Family>ForSequenceClassification
with num_labels=1 (AutoModelForSequenceClassification), whose score is read at the rightmost token
that is not `pad_token_id`: that equals our last real token because our pad is a dedicated token
that never occurs inside a sequence, so pad_token_id must be set (from the tokenizer or `pad_id`).
HF's `score` layer has no bias: ours is folded into the final LayerNorm's bias (exact) or, for
RMSNorm models, written to config.json as `score_bias` (add it to HF scores).

Only the real vocabulary is exported (`real_vocab_size` rows, plus a <pad> appended right after
it): our model masks the logits of the padding rows, transformers would not. An appended <pad>
keeps its row (inputs use it) and generation_config.json suppresses it, as our sampler does.
"""
import functools
import operator
import os
import shutil
import uuid
from typing import Any

import jax
import ml_dtypes
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from rlhf_jax.data.tokenizers import (PAD_TOKEN, SentencePieceTokenizer, from_pretrained,
                                      load_tokenizer)
from rlhf_jax.hf import HFError, families
from rlhf_jax.models.config import ModelConfig

_NP_DTYPES = {'float32': np.float32, 'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16}


def _host(x: Any) -> np.ndarray:
  """The full value of a (possibly sharded, multi-host) array on this host."""
  if isinstance(x, jax.Array):
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _rope(c: ModelConfig, family: str) -> dict:
  rope = {'rope_type': 'default', 'rope_theta': c.rope_theta}
  if c.rope_scaling is not None:
    rope.update(rope_type=c.rope_scaling[0], factor=c.rope_scaling[1])
    if c.rope_scaling[0] == 'llama3':
      rope.update(zip(('low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'),
                      c.rope_scaling[2:]))
  if family == 'gpt_neox':
    rope['partial_rotary_factor'] = c.rotary_pct
  return rope


def _hf_config(c: ModelConfig, family: str, head: str, ids: dict, dtype: str, rows: int):
  """The transformers config object of `c` with `rows` vocabulary entries."""
  import transformers  # Slow to import; only export needs it.
  classes = families.LM_CLASSES if head == 'lm' else families.SCALAR_CLASSES
  common = dict(vocab_size=rows, tie_word_embeddings=c.tie_embeddings, dtype=dtype,
                architectures=[classes[family]], **ids)
  gelu = 'gelu' if c.mlp == 'gelu_exact' else 'gelu_new'  # exact erf form / tanh approximation
  if family == 'gpt2':
    return transformers.GPT2Config(
        n_positions=c.max_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        n_inner=c.d_ff, activation_function=gelu, layer_norm_epsilon=c.norm_eps,
        resid_pdrop=c.resid_dropout, embd_pdrop=c.embed_dropout, attn_pdrop=c.attn_dropout,
        **common)
  sizes = dict(hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
               intermediate_size=c.d_ff, max_position_embeddings=c.max_len,
               rope_parameters=_rope(c, family), attention_dropout=c.attn_dropout)
  if family == 'gpt_neox':
    return transformers.GPTNeoXConfig(
        hidden_act=gelu, layer_norm_eps=c.norm_eps, use_parallel_residual=c.parallel_residual,
        attention_bias=True, hidden_dropout=c.resid_dropout, **sizes, **common)
  llama = dict(num_key_value_heads=c.kv_heads, rms_norm_eps=c.norm_eps, hidden_act='silu',
               head_dim=c.d_head)
  if family == 'qwen2':
    return transformers.Qwen2Config(**llama, **sizes, **common)
  return transformers.LlamaConfig(attention_bias=c.use_bias, mlp_bias=c.use_bias, **llama,
                                  **sizes, **common)


def _generation_config(hf_config, pad_id: int):
  """Generation settings that never emit the appended <pad>, whose logit our model masks."""
  import transformers  # Slow to import; only export needs it.
  generation = transformers.GenerationConfig.from_model_config(hf_config)
  generation.suppress_tokens = [pad_id]
  return generation


def _fold_score_bias(params: dict, c: ModelConfig) -> tuple[dict, float]:
  """(params with the scalar head's bias folded into ln_f's bias where exact, bias left over).

  score = (n * g + beta) . w + b = (n * g + beta + b w / |w|^2) . w, so shifting the LayerNorm
  bias along w absorbs b; RMSNorm has no bias to shift.
  """
  b = float(_host(params['scalar_head']['bias'])[0])
  if c.norm != 'layernorm' or not c.use_bias or b == 0.0:
    return params, b
  w = _host(params['scalar_head']['kernel'])[:, 0].astype(np.float64)
  beta = _host(params['trunk']['ln_f']['bias']).astype(np.float64) + b * w / (w @ w)
  trunk = {**params['trunk'], 'ln_f': {**params['trunk']['ln_f'], 'bias': beta}}
  return {**params, 'trunk': trunk}, 0.0


def _hf_tensors(params: dict, c: ModelConfig, family: str, head: str, dtype: np.dtype,
                rows: int) -> dict[str, np.ndarray]:
  """HF tensor name -> array, per layer unstacked, in `dtype`, with `rows` vocabulary rows."""
  out = {}
  for g in families.groups(c, family, rows, lm_head=head == 'lm'):
    ours = [_host(functools.reduce(operator.getitem, p, params)) for p in g.paths]
    for i in range(c.n_layers) if g.per_layer else [None]:
      parts = ours if i is None else [x[i] for x in ours]
      for name, t in zip(g.names, g.to_hf(*parts)):
        out[name.format(i=i)] = np.ascontiguousarray(t, dtype)
  if head == 'scalar':
    out['score.weight'] = np.ascontiguousarray(_host(params['scalar_head']['kernel']).T, dtype)
  return out


def _exported_rows(c: ModelConfig, n_tokens: int, pad_id: int | None) -> int:
  """Vocabulary rows to export: the real ones, and a <pad> appended right after them (as
  load_tokenizer appends to GPT-2 / Llama tokenizers) since inputs index its row; HFError when
  the tokenizer (`n_tokens` ids) or `pad_id` needs rows the model does not have."""
  real = c.real_vocab_size or c.vocab_size
  rows = real + 1 if pad_id == real and real < c.vocab_size else real
  needed = max(n_tokens, -1 if pad_id is None else pad_id + 1)
  if needed > rows:
    raise HFError(f'the tokenizer has {n_tokens} tokens (pad id {pad_id}) but the model has '
                     f'{real} real vocabulary rows (real_vocab_size)')
  return rows


def _spm_to_hf(tok: SentencePieceTokenizer):
  """A transformers fast tokenizer that encodes as the sentencepiece model does."""
  import transformers  # Slow to import; only export needs it.
  from sentencepiece import sentencepiece_model_pb2
  from transformers.convert_slow_tokenizer import SpmConverter
  with open(tok.path, 'rb') as f:
    proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
  vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
  spec = proto.trainer_spec
  # transformers' builder follows the model's own normaliser spec and BPE piece scores (or
  # unigram scores). split_special_tokens: sentencepiece reads "<s>" in text as characters.
  backend = SpmConverter.build_tokenizer_from_spm_proto(
      proto, vocab if spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
      else [(p.piece, p.score) for p in proto.pieces])
  if backend is None:
    raise HFError(f'{tok.path}: only BPE and unigram sentencepiece models can be exported')
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, unk_token=spec.unk_piece, bos_token=spec.bos_piece,
      eos_token=spec.eos_piece, pad_token=spec.pad_piece, split_special_tokens=True)


def _save_tokenizer(tok, tokenizer_dir: str, out_dir: str) -> None:
  """Writes the tokenizer as our pipelines used it: a HF folder with its <pad>, or a
  sentencepiece model converted to a transformers fast tokenizer."""
  import transformers  # Slow to import; only export needs it.
  if isinstance(tok, SentencePieceTokenizer):
    _spm_to_hf(tok).save_pretrained(out_dir)
    return
  if os.path.exists(os.path.join(tokenizer_dir, 'tokenizer_config.json')):
    hf_tok = from_pretrained(tokenizer_dir)
  else:
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(tokenizer_dir, 'tokenizer.json'))
  if tok.pad_id == len(hf_tok):  # load_tokenizer appended its <pad>: so do we.
    hf_tok.add_special_tokens({'pad_token': PAD_TOKEN})
  # A bare tokenizer.json names no special roles; give them the ids load_tokenizer found.
  hf_tok.add_special_tokens({role: hf_tok.convert_ids_to_tokens(i) for role, i in
                             (('bos_token', tok.bos_id), ('eos_token', tok.eos_id),
                              ('pad_token', tok.pad_id))})
  hf_tok.save_pretrained(out_dir)


def export_hf(params: Any, config: ModelConfig, out_dir: str | os.PathLike, *, head: str = 'lm',
              tokenizer_dir: str | os.PathLike | None = None, pad_id: int | None = None,
              dtype: str | None = None, model_card: str | None = None) -> str:
  """Writes config.json, model.safetensors (and the tokenizer) that transformers loads.

  Args:
    params: LanguageModel params (head='lm') or ScalarModel params (head='scalar'), possibly
      sharded over a mesh (gathered here one tensor at a time).
    config: the model's config; refused (HFError) when no HF architecture computes the same.
    out_dir: created; must not exist or be empty. Written to a temporary sibling and renamed,
      so a failed export leaves nothing that looks complete.
    head: 'lm' (AutoModelForCausalLM) or 'scalar' (sequence classification, num_labels=1).
    tokenizer_dir: the tokenizer used in training (a HF folder or a sentencepiece model, as
      load_tokenizer reads); written (with its <pad>) and its bos/eos/pad ids written to
      config.json. Without it bos/eos are left unset: no transformers default is made up.
    pad_id: pad token id when no tokenizer_dir is given (required for head='scalar').
    dtype: tensor dtype ('float32', 'bfloat16', 'float16'); default config.param_dtype.
    model_card: the text of README.md, written with the rest.

  Returns:
    out_dir.
  """
  out_dir, dtype = os.fspath(out_dir), dtype or config.param_dtype
  family = families.export_family(config)
  if head not in ('lm', 'scalar'):
    raise HFError(f"head must be 'lm' or 'scalar', got {head!r}")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise HFError(f'{out_dir}: exists and is not a folder')
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise HFError(f'{out_dir}: exists and is not empty')
  if head == 'scalar' and pad_id is None and tokenizer_dir is None:
    raise HFError('a scalar model needs pad_token_id (pass tokenizer_dir or pad_id): '
                     'transformers scores the last non-pad token')
  tok = None if tokenizer_dir is None else load_tokenizer(tokenizer_dir)
  ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=pad_id)
  if tok is not None:
    ids = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
  rows = _exported_rows(config, 0 if tok is None else tok.vocab_size, ids['pad_token_id'])
  score_bias = 0.0
  if head == 'scalar':
    params, score_bias = _fold_score_bias(params, config)
  # Every process gathers (a collective); process 0 alone writes.
  tensors = _hf_tensors(params, config, family, head, np.dtype(_NP_DTYPES[dtype]), rows)
  if jax.process_index() != 0:
    return out_dir
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  # Not tempfile.mkdtemp: its folder is private (0700); this one honours the umask.
  tmp = os.path.join(parent, f'.export-{uuid.uuid4().hex[:12]}')
  os.mkdir(tmp)
  try:
    if tok is not None:
      _save_tokenizer(tok, os.fspath(tokenizer_dir), tmp)
    if model_card is not None:
      with open(os.path.join(tmp, 'README.md'), 'w', encoding='utf-8') as f:
        f.write(model_card)
    hf_config = _hf_config(config, family, head, ids, dtype, rows)
    if head == 'lm' and rows > (config.real_vocab_size or config.vocab_size):
      _generation_config(hf_config, rows - 1).save_pretrained(tmp)
    if head == 'scalar':
      hf_config.num_labels = 1
    if score_bias:
      logging.warning('%s: HF sequence classifiers have no score bias; add config.score_bias '
                      '(%g) to their scores', out_dir, score_bias)
      hf_config.score_bias = score_bias
    hf_config.save_pretrained(tmp)
    weights = os.path.join(tmp, 'model.safetensors')
    save_file(tensors, weights, metadata={'format': 'pt'})
    # safetensors creates its file private (0600); give it the mode the umask gives the others.
    os.chmod(weights, os.stat(tmp).st_mode & 0o666)
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.rename(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir
