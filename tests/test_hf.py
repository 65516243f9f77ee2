"""Hugging Face import / export: parity with transformers on tiny random models of each family."""
import dataclasses
import io
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import huggingface_hub
import pytest
import tokenizers
import torch
import transformers
from safetensors.numpy import load_file, save_file
from stage_fixtures import REPO, copy_workdir, fake_ppo_stage

from rlhf_jax import checkpoint, config_lib, rm, sampling, sharding, stages, state
from rlhf_jax.data import records
from rlhf_jax.data.tokenizers import load_tokenizer
from rlhf_jax.hf import HFError, cli
from rlhf_jax.hf.exporter import export_hf
from rlhf_jax.hf.importer import hf_model_config, load_hf
from rlhf_jax.models import LanguageModel, ScalarModel, last_token_value
from rlhf_jax.stages import common, world

torch.set_num_threads(1)
V = 128  # A multiple of 128: no padded rows, so greedy decoding compares every logit.
LLAMA3_ROPE = {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0,
               'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
               'original_max_position_embeddings': 16}
FAMILIES = {
    'gpt2': lambda v: transformers.GPT2Config(
        vocab_size=v, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2),
    'gpt_neox': lambda v: transformers.GPTNeoXConfig(
        vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, rotary_pct=0.5, hidden_act='gelu',
        use_parallel_residual=True, tie_word_embeddings=False, initializer_range=0.2),
    'llama': lambda v: transformers.LlamaConfig(
        vocab_size=v, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False, initializer_range=0.2),
    'qwen2': lambda v: transformers.Qwen2Config(
        vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, initializer_range=0.2),
}


def _save_model(family: str, path, vocab: int = V, head: str = 'lm'):
  torch.manual_seed(0)
  cfg = FAMILIES[family](vocab)
  cls = (transformers.AutoModelForCausalLM if head == 'lm'
         else transformers.AutoModelForSequenceClassification)
  if head == 'scalar':
    cfg.num_labels, cfg.pad_token_id = 1, 0
  model = cls.from_config(cfg).eval()
  if family == 'qwen2':  # Random qkv biases, so a misplaced one shows (HF initialises them to 0).
    with torch.no_grad():
      for layer in model.model.layers:
        layer.self_attn.q_proj.bias.normal_(0.0, 0.2)
        layer.self_attn.k_proj.bias.normal_(0.0, 0.2)
  model.save_pretrained(path)
  return model


def _batch():
  """A left-padded, a right-padded and a full row: tokens, mask [3, 10]."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 100, (3, 10))
  mask = np.ones((3, 10), bool)
  mask[0, :3] = False
  mask[1, 7:] = False
  return np.where(mask, tokens, 0), mask


def _hf_logits(model, tokens, mask) -> np.ndarray:
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(positions))
  return out.logits.float().numpy()


@pytest.fixture(scope='module', params=list(FAMILIES))
def imported(request, tmp_path_factory):
  path = tmp_path_factory.mktemp(request.param)
  model = _save_model(request.param, path)
  config, params = load_hf(path)
  return request.param, path, model, config, params


def _logits(config, params, tokens, mask) -> np.ndarray:
  return np.asarray(jax.jit(LanguageModel(config).apply)({'params': params}, tokens, mask))


@pytest.mark.slow
def test_import_logits_match(imported):
  _, _, model, config, params = imported
  tokens, mask = _batch()
  ours = _logits(config, params, tokens, mask)
  np.testing.assert_allclose(ours[mask], _hf_logits(model, tokens, mask)[mask],
                             atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_greedy_generation_matches(imported):
  _, _, model, config, params = imported
  tokens, mask = _batch()
  # Prompts must be left-padded for both samplers: shift each row's real tokens to the right.
  order = np.argsort(mask, axis=1, kind='stable')
  tokens, mask = np.take_along_axis(tokens, order, 1), np.take_along_axis(mask, order, 1)
  out = sampling.sample(params, config, jnp.asarray(tokens), jnp.asarray(mask),
                        jax.random.key(0), max_new_tokens=8, temperature=0.0)
  with torch.no_grad():
    ref = model.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                         max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, tokens.shape[1]:].numpy())


def test_export_roundtrip_logits(imported, tmp_path):
  family, _, model, config, params = imported
  out = export_hf(params, config, tmp_path / 'out', pad_id=0)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert loaded.config.model_type == family
  tokens, mask = _batch()
  np.testing.assert_allclose(_hf_logits(loaded, tokens, mask)[mask],
                             _hf_logits(model, tokens, mask)[mask], atol=1e-5, rtol=1e-5)


def _word_tokenizer(path, n_words: int):
  """A bare tokenizer.json with <|endoftext|> plus n_words words (ids 0..n_words)."""
  vocab = {'<|endoftext|>': 0, **{f'w{i}': i + 1 for i in range(n_words)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<|endoftext|>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, 'tokenizer.json'))
  return path


def test_padded_vocab_rows_are_zero_and_tokenizer_pad_fits(tmp_path):
  model = _save_model('gpt2', tmp_path / 'm', vocab=100)
  tok = load_tokenizer(_word_tokenizer(tmp_path / 'tok', 99))  # 100 tokens + appended <pad>
  assert tok.vocab_size == 101 and tok.pad_id == 100
  config, params = load_hf(tmp_path / 'm', tokenizer=tok)
  assert config.vocab_size == 128
  np.testing.assert_array_equal(params['trunk']['embed']['embedding'][100:], 0.0)
  tokens, mask = _batch()
  np.testing.assert_allclose(_logits(config, params, tokens, mask)[mask][:, :100],
                             _hf_logits(model, tokens, mask)[mask], atol=1e-4, rtol=1e-4)
  # Export ships the tokenizer with its <pad>, and config.json names it.
  out = export_hf(params, config, tmp_path / 'out', tokenizer_dir=tmp_path / 'tok')
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert hf_tok.pad_token_id == cfg['pad_token_id'] == 100 and cfg['eos_token_id'] == 0
  assert len(hf_tok) == 101


def test_sharded_load_on_mesh_equals_unsharded(tmp_path):
  _save_model('llama', tmp_path)
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 2, 'tensor': 4})
  config, sharded = load_hf(tmp_path, mesh=mesh)
  _, plain = load_hf(tmp_path)
  q = sharded['trunk']['layers']['attn']['query']['kernel']  # [L, D, H, Dh]: fsdp, tensor
  assert tuple(q.sharding.spec)[:3] == (None, 'fsdp', 'tensor')
  assert q.addressable_shards[0].data.shape == (2, 32, 1, 16)
  k = sharded['trunk']['layers']['attn']['key']['kernel']  # 2 kv heads: tensor=4 replicates
  assert k.addressable_shards[0].data.shape == (2, 32, 2, 16)
  jax.tree.map(np.testing.assert_array_equal, sharded, plain)
  assert config.n_kv_heads == 2 and config.rope_scaling[0] == 'llama3'


def test_index_shards_bf16_and_missing_shard(tmp_path):
  model = _save_model('gpt_neox', tmp_path / 'f32')
  model.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16', max_shard_size='20KB')
  index = json.loads((tmp_path / 'bf16' / 'model.safetensors.index.json').read_text())
  assert len(set(index['weight_map'].values())) > 1
  _, params = load_hf(tmp_path / 'bf16')
  ref = model.gpt_neox.embed_in.weight.detach().float().numpy()
  np.testing.assert_array_equal(params['trunk']['embed']['embedding'][:V], ref)
  shard = index['weight_map']['gpt_neox.final_layer_norm.weight']
  os.remove(tmp_path / 'bf16' / shard)
  with pytest.raises(HFError, match=f'{shard}: missing shard'):
    load_hf(tmp_path / 'bf16')


@pytest.fixture(name='gpt2_dir')
def _gpt2_dir(tmp_path):
  _save_model('gpt2', tmp_path / 'gpt2', vocab=100)
  return tmp_path / 'gpt2'


def _rewrite_tensor(folder, name, fn):
  path = os.path.join(folder, 'model.safetensors')
  tensors = load_file(path)
  tensors[name] = fn(tensors[name])
  save_file(tensors, path, metadata={'format': 'pt'})


def test_bad_inputs_are_one_line_errors(gpt2_dir, tmp_path):
  name = 'transformer.h.1.mlp.c_fc.weight'
  _rewrite_tensor(gpt2_dir, name, lambda w: w.astype(np.int8))
  with pytest.raises(HFError, match=rf'model.safetensors: tensor {name} has dtype I8'):
    load_hf(gpt2_dir)
  _rewrite_tensor(gpt2_dir, name, lambda w: np.zeros((32, 100), np.float32))
  with pytest.raises(HFError, match=rf'tensor {name} has shape \(32, 100\), config.json '
                     r'implies \(32, 128\)'):
    load_hf(gpt2_dir)
  tok = load_tokenizer(_word_tokenizer(tmp_path / 'tok', 149))
  with pytest.raises(HFError, match='tokenizer has 151 tokens but the embedding has 100 rows'):
    hf_model_config(gpt2_dir, tokenizer=tok)
  cfg = json.loads((gpt2_dir / 'config.json').read_text())
  (gpt2_dir / 'config.json').write_text(json.dumps({**cfg, 'model_type': 'mistral'}))
  with pytest.raises(HFError, match=r"config.json: unsupported architecture model_type='mistral'"):
    load_hf(gpt2_dir)


def test_export_refuses_banded_attention(gpt2_dir, tmp_path):
  config, params = load_hf(gpt2_dir)
  with pytest.raises(HFError, match="attention_pattern='alternating'"):
    export_hf(params, config.replace(attention_pattern='alternating'), tmp_path / 'out')
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
@pytest.mark.slow
def test_scalar_export_scores_last_real_token(family, tmp_path):
  """RM / value export: HF's sequence classifier gives our last-token value (plus score_bias)."""
  _save_model(family, tmp_path / 'm')
  config, lm = load_hf(tmp_path / 'm')
  rng = np.random.default_rng(1)
  head = {'kernel': jnp.asarray(rng.normal(size=(config.d_model, 1)), jnp.float32),
          'bias': jnp.asarray([0.7], jnp.float32)}
  params = {'trunk': lm['trunk'], 'scalar_head': head}
  tokens, mask = _batch()
  values = jax.jit(ScalarModel(config).apply)({'params': params}, tokens, mask)
  ours = np.asarray(last_token_value(values, jnp.asarray(mask)))
  out = export_hf(params, config, tmp_path / 'rm', head='scalar', pad_id=0)
  loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  with torch.no_grad():  # No position ids: HF's own defaults for a right-padded/full batch.
    theirs = loaded(input_ids=torch.tensor(tokens[1:]),
                    attention_mask=torch.tensor(mask[1:].astype(np.int64))).logits[:, 0].numpy()
  offset = getattr(loaded.config, 'score_bias', 0.0)
  assert offset == (0.0 if family == 'gpt2' else pytest.approx(0.7))
  np.testing.assert_allclose(theirs + offset, ours[1:], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cli_exports_a_stage_checkpoint(tmp_path):
  config_file = os.path.join(os.path.dirname(__file__), '..', 'configs', 'sft.py')
  config = config_lib.load_config(config_file + ':tiny')
  roles = config_lib.model_roles(config)
  model, head = roles['policy']
  init = jax.jit(state.init_params, static_argnums=(0, 1))
  params = nn.unbox(init(model, head, jax.random.key(0)))
  stage = tmp_path / 'sft'
  ckpt = checkpoint.Checkpointer(str(stage), checkpoint.fingerprint(roles))
  ckpt.save(5, {'step': jnp.int32(5), 'params': params})
  ckpt.close()
  checkpoint.write_summary(str(stage), {'checkpoint_step': 5})
  out, err = io.StringIO(), io.StringIO()
  argv = ['hf', 'export', f'--checkpoint={stage}', f'--config={config_file}:tiny',
          f'--out={tmp_path / "hf"}']
  assert cli.main(argv, out, err) == 0, err.getvalue()
  loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
  tokens, mask = _batch()
  ours = _logits(model, params, tokens, mask)
  np.testing.assert_allclose(_hf_logits(loaded, tokens, mask)[mask], ours[mask], atol=1e-4)
  assert cli.main(argv, out, err) == 1 and 'not empty' in err.getvalue()
  err = io.StringIO()
  assert cli.main([*argv[:-1], f'--out={tmp_path / "raw"}', '--ppo_params=policy'], out, err) == 1
  assert err.getvalue() == (f'error: {stage}: --ppo_params picks the policy of a PPO stage; this '
                            'is not one\n')


def test_cli_help_lists_commands_and_flags_and_usage_errors_are_one_line():
  out, err = io.StringIO(), io.StringIO()
  assert cli.main(['hf', '--help'], out, err) == 0
  text = out.getvalue()
  short = io.StringIO()
  assert cli.main(['hf', 'export', '-h'], short, err) == 0 and short.getvalue() == text
  assert 'python -m rlhf_jax.hf export' in text and 'python -m rlhf_jax.hf inspect' in text
  for flag in ('checkpoint', 'out', 'config', 'ppo_params', 'tokenizer', 'dtype', 'push_to_hub'):
    assert f'  --{flag}: ' in text
  for argv in (['hf'], ['hf', 'convert'], ['hf', 'export', '--bogus'],
               ['hf', 'export', '--out=x'], ['hf', 'inspect']):
    err = io.StringIO()
    assert cli.main(argv, io.StringIO(), err) == 2, argv
    assert err.getvalue().startswith('error: ') and err.getvalue().count('\n') == 1, argv


@pytest.mark.slow
def test_module_help_exits_0():
  result = subprocess.run([sys.executable, '-m', 'rlhf_jax.hf', '--help'], capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert '--checkpoint' in result.stdout


def _export(*flags: str) -> tuple[int, str]:
  """(exit status, stderr) of `python -m rlhf_jax.hf export FLAGS`, run from the repository."""
  err = io.StringIO()
  return cli.main(['hf', 'export', *flags], io.StringIO(), err), err.getvalue()


def _stage_params(workdir, stage: str, head: str):
  """(geometry, params) of a completed stage, loaded as the stages load an init."""
  model = config_lib.to_model_config(checkpoint.read_summary(str(workdir / stage))['model'])
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  return model, common.load_init_params(stage, str(workdir), model, head, mesh)


def _world_texts(workdir) -> list[str]:
  """A few prompts of the world, which its tokenizer was trained on."""
  lines = world.paths(workdir / 'data')['sft_train'].read_text().splitlines()
  return [json.loads(line)['prompt'] for line in lines[:4]]


def _report(likert: float) -> dict:
  """An eval report.json with one policy, as the eval stage writes it."""
  sft = {'win_rate_vs_sft': 0.5, 'win_rate_ci': [0.3, 0.7], 'likert': likert,
         'fails_instruction_rate': 0.25, 'hallucination_rate': None, 'inappropriate_rate': 0.0,
         'pretrain_loss': 3.0, 'public_evals': {'sentiment': 0.5}}
  return {'policies': {'sft': sft}, 'baseline': 'sft', 'n_prompts': 4, 'temperature': 1.0,
          'labelers': 2, 'ppo_params': 'ema', 'examples': []}


def test_export_sft_policy_with_world_tokenizer_card_and_offline_push(tiny_workdir, tmp_path,
                                                                      monkeypatch):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'run', ['data', 'sft'])
  (workdir / 'eval').mkdir()
  (workdir / 'eval' / 'report.json').write_text(json.dumps(_report(likert=4.56)))
  monkeypatch.chdir(REPO)  # the default config is configs/<stage>.py
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  out = tmp_path / 'out'
  status, err = _export(f'--checkpoint={workdir / "sft"}', f'--out={out}',
                        '--push_to_hub=someone/sft')
  # Offline, the push stops with the folder it would upload complete.
  assert status == 1 and err.count('\n') == 1
  assert err.startswith(f'error: {out}: exported but not pushed to someone/sft: offline mode')
  model, params = _stage_params(workdir, 'sft', 'lm')
  tokens, mask = _batch()
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_hf_logits(loaded, tokens, mask)[mask],
                             _logits(model, params, tokens, mask)[mask], atol=1e-4)
  ours = load_tokenizer(world.paths(workdir / 'data')['tokenizer'])
  theirs = transformers.AutoTokenizer.from_pretrained(out)
  for text in _world_texts(workdir):
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
  card = (out / 'README.md').read_text()
  assert card.startswith('---\nlibrary_name: transformers\npipeline_tag: text-generation\n')
  assert '| sft | 0.500 | [0.300, 0.700] | 4.56 |' in card  # the eval table
  assert '"stage": "sft"' in card and '"checkpoint_step"' in card  # config and summary
  # The config is the one the stage ran with (the fixture's 3 steps), not the shipped one.
  assert 'the stage ran with (its provenance.json)' in card and '"total_steps": 3' in card


def test_export_ppo_ptx_policy_ema_or_raw(tiny_workdir, tmp_path, monkeypatch):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'run', ['data', 'pretrain', 'sft'])
  fake_ppo_stage(workdir, 'ppo_ptx', policy_from='pretrain', ema_from='sft')
  monkeypatch.chdir(REPO)
  tokens, mask = _batch()
  for ppo_params, source, words in (('ema', 'sft', 'The EMA policy'),
                                    ('policy', 'pretrain', 'The raw (non-EMA) policy')):
    out = tmp_path / ppo_params
    status, err = _export(f'--checkpoint={workdir / "ppo_ptx"}', f'--out={out}',
                          f'--ppo_params={ppo_params}')
    assert status == 0, err
    model, params = _stage_params(workdir, source, 'lm')
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    np.testing.assert_allclose(_hf_logits(loaded, tokens, mask)[mask],
                               _logits(model, params, tokens, mask)[mask], atol=1e-4)
    card = (out / 'README.md').read_text()
    assert f'{words} of the RL stage `ppo_ptx`' in card and 'no eval report' in card


def test_export_reward_model_scores_as_ppo_saw_them(inputs, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  out = tmp_path / 'rm'
  status, err = _export(f'--checkpoint={inputs / "rm"}', f'--out={out}')
  assert status == 0, err
  model, params = _stage_params(inputs, 'rm', 'scalar')
  tok = load_tokenizer(world.paths(inputs / 'data')['tokenizer'])
  rows = [[tok.bos_id] + tok.encode(text) for text in _world_texts(inputs)]
  length = max(map(len, rows))
  tokens = np.array([r + [tok.pad_id] * (length - len(r)) for r in rows])  # right-padded
  mask = tokens != tok.pad_id
  bias = checkpoint.read_summary(str(inputs / 'rm'))['reward_bias']
  ours = rm.reward_scores(params, tokens, mask, model=ScalarModel(model), bias=bias)
  loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = loaded(input_ids=torch.tensor(tokens),
                    attention_mask=torch.tensor(mask.astype(np.int64))).logits[:, 0].numpy()
  theirs += getattr(loaded.config, 'score_bias', 0.0)
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-4, rtol=1e-4)
  assert 'normalisation bias 0.5' in (out / 'README.md').read_text()


def test_export_of_a_reward_model_without_its_tokenizer_is_refused(inputs, tmp_path,
                                                                  monkeypatch):
  workdir = copy_workdir(inputs, tmp_path / 'run', ['rm'])  # no data/: the tokenizer is gone
  monkeypatch.chdir(REPO)
  status, err = _export(f'--checkpoint={workdir / "rm"}', f'--out={tmp_path / "out"}')
  assert status == 1 and err == (f'error: {workdir / "rm"}: the run\'s tokenizer is gone; pass '
                                 '--tokenizer (a reward model needs its pad id)\n')
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_sft_stage_starts_from_a_hf_folder(tmp_path):
  folder = tmp_path / 'gpt2'
  _save_model('gpt2', folder, vocab=100)
  _word_tokenizer(folder, 99)
  tok = load_tokenizer(folder)
  demos = [{'prompt': f'w{i} w{i + 1}', 'completion': f'w{i + 2} w{i + 3} w{i + 4}'}
           for i in range(1, 60)]
  records.write_records(tmp_path / 'demos.jsonl', 'demonstrations', demos)
  config = config_lib.load_config('configs/sft.py')
  imported_model = dataclasses.asdict(hf_model_config(folder, tok))
  config.model.update({k: v for k, v in imported_model.items() if k in config.model})
  config.update(dict(workdir=str(tmp_path / 'run'), init_from=f'hf:{folder}', total_steps=2,
                     batch_size=8, eval_every=0))
  config.data.update(dict(seq_len=32, prompt_len=16, response_len=16, tokenizer=str(folder),
                          demonstrations=str(tmp_path / 'demos.jsonl'),
                          demonstrations_valid=str(tmp_path / 'demos.jsonl')))
  assert stages.needs(config) == ()
  summary = stages.run(config)
  assert summary['steps'] == 2 and np.isfinite(summary['selected_value'])
  config.model.n_layers = 3
  config.workdir = str(tmp_path / 'other')
  with pytest.raises(config_lib.ConfigError, match='n_layers=2'):
    stages.run(config)


def _negative_logits_gpt2(path, vocab: int):
  """A GPT-2 whose every logit is negative: embedding column 0 is large and positive and the
  final LayerNorm's bias points the other way. A zero (padding) row's logit 0 beats them all."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(FAMILIES['gpt2'](vocab)).eval()
  with torch.no_grad():
    model.transformer.wte.weight[:, 0] += 5.0
    model.transformer.ln_f.bias[0] = -50.0
  model.save_pretrained(path)
  return model


@pytest.mark.slow
def test_export_keeps_only_the_real_vocabulary(tmp_path):
  """100 real ids padded to 128 rows (real GPT-2: 50257 -> 50304): transformers must get the 100
  rows and nothing else, so its greedy tokens are ours."""
  model = _negative_logits_gpt2(tmp_path / 'm', vocab=100)
  config, params = load_hf(tmp_path / 'm')
  assert (config.vocab_size, config.real_vocab_size) == (128, 100)
  loaded = transformers.AutoModelForCausalLM.from_pretrained(
      export_hf(params, config, tmp_path / 'out', pad_id=0)).eval()
  assert loaded.config.vocab_size == 100
  tokens, mask = _batch()
  np.testing.assert_allclose(_hf_logits(loaded, tokens, mask)[mask],
                             _hf_logits(model, tokens, mask)[mask], atol=1e-4, rtol=1e-4)
  prompt = jnp.asarray(tokens[2:]), jnp.ones((1, 10), bool)
  ours = sampling.sample(params, config, *prompt, jax.random.key(0), max_new_tokens=6,
                         temperature=0.0)
  with torch.no_grad():
    theirs = loaded.generate(torch.tensor(tokens[2:]), max_new_tokens=6, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
  np.testing.assert_array_equal(np.asarray(ours.tokens), theirs[:, 10:].numpy())


def test_export_keeps_an_appended_pad_and_never_generates_it(tmp_path):
  """A tokenizer's appended <pad> keeps its row (inputs use it); generation suppresses it, as
  our model masks it."""
  model = _negative_logits_gpt2(tmp_path / 'm', vocab=100)
  tok = load_tokenizer(_word_tokenizer(tmp_path / 'tok', 99))  # 100 tokens + <pad> = 100
  config, params = load_hf(tmp_path / 'm', tokenizer=tok)
  out = export_hf(params, config, tmp_path / 'out', tokenizer_dir=tmp_path / 'tok')
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert loaded.config.vocab_size == 101 and loaded.generation_config.suppress_tokens == [100]
  tokens, _ = _batch()
  with torch.no_grad():
    theirs = loaded.generate(torch.tensor(tokens[2:]), max_new_tokens=6, do_sample=False)
    ref = model.generate(torch.tensor(tokens[2:]), max_new_tokens=6, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
  np.testing.assert_array_equal(theirs.numpy(), ref.numpy())


def test_hf_init_refuses_a_different_architecture(tmp_path):
  """init_from=hf:DIR trains the folder's model or stops: fields beyond the shapes count."""
  from rlhf_jax.stages import common
  _save_model('gpt_neox', tmp_path / 'neox')
  found = hf_model_config(tmp_path / 'neox')
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  params = common.load_init_params(f'hf:{tmp_path / "neox"}', str(tmp_path), found, 'lm', mesh)
  assert params['trunk']['layers']['attn']['query']['kernel'].shape[0] == 2
  for field, value in [('rotary_pct', 0.25), ('rope_theta', 500000.0), ('norm_eps', 1e-6),
                       ('parallel_residual', False), ('real_vocab_size', 100)]:
    with pytest.raises(config_lib.ConfigError, match=rf'{field}=\S+ \(config: {value}\)'):
      common.load_init_params(f'hf:{tmp_path / "neox"}', str(tmp_path),
                              found.replace(**{field: value}), 'lm', mesh)


def test_qwen2_with_its_own_head_dim_exports(tmp_path):
  torch.manual_seed(0)
  cfg = FAMILIES['qwen2'](V)
  cfg.head_dim = 16  # hidden 32 / 4 heads would be 8
  model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  model.save_pretrained(tmp_path / 'm')
  config, params = load_hf(tmp_path / 'm')
  assert config.d_head == 16
  loaded = transformers.AutoModelForCausalLM.from_pretrained(
      export_hf(params, config, tmp_path / 'out', pad_id=0)).eval()
  assert loaded.config.head_dim == 16
  tokens, mask = _batch()
  np.testing.assert_allclose(_hf_logits(loaded, tokens, mask)[mask],
                             _hf_logits(model, tokens, mask)[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_export_ids_permissions_and_sentencepiece_tokenizer(tmp_path):
  """No made-up bos/eos (GPT2Config's 50256 in a 512-token model), a folder as the umask says,
  and the mini world's sentencepiece tokenizer shipped as a tokenizer that encodes the same."""
  from rlhf_jax.data.tokenizers import train_sentencepiece
  config = config_lib.to_model_config(config_lib.model_config_dict('tiny'))
  params = nn.unbox(jax.jit(state.init_params, static_argnums=(0, 1))(config, 'lm',
                                                                      jax.random.key(0)))
  export_hf(params, config, tmp_path / 'bare', pad_id=0)
  cfg = json.loads((tmp_path / 'bare' / 'config.json').read_text())
  assert cfg['bos_token_id'] is None and cfg['eos_token_id'] is None
  texts = [f'The {w} number {i} is\nnot {i * 7} {w}s.' for i in range(300)
           for w in ('cat', 'tree', 'river')]
  spm = train_sentencepiece(texts, vocab_size=200, out_dir=tmp_path / 'spm')
  old = os.umask(0o022)
  try:
    out = export_hf(params, config, tmp_path / 'out', tokenizer_dir=tmp_path / 'spm')
  finally:
    os.umask(old)
  assert os.stat(out).st_mode & 0o777 == 0o755
  assert {os.stat(os.path.join(out, f)).st_mode & 0o777 for f in os.listdir(out)} == {0o644}
  cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert (cfg['bos_token_id'], cfg['eos_token_id'], cfg['pad_token_id']) == (
      spm.bos_id, spm.eos_id, spm.pad_id)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  for text in texts[::50]:  # texts the tokenizer was trained on
    ids = spm.encode(text)
    assert hf_tok.encode(text, add_special_tokens=False) == ids
    assert hf_tok.decode(ids + [spm.eos_id], skip_special_tokens=True) == spm.decode(ids)
  # Unseen characters are <unk> in both (decoding differs: sentencepiece writes a mark).
  assert hf_tok.encode('unseen: xyz!', add_special_tokens=False) == spm.encode('unseen: xyz!')


def _remote_code_tokenizer(path, marker):
  """A tokenizer folder whose tokenizer_config.json maps AutoTokenizer to its own code, which
  leaves `marker` when it runs."""
  _word_tokenizer(path, 9)
  (path / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'OwnTokenizer', 'eos_token': '<|endoftext|>',
       'auto_map': {'AutoTokenizer': ['own.OwnTokenizer', None]}}))
  (path / 'own.py').write_text(
      f'import pathlib\npathlib.Path({str(marker)!r}).write_text("ran")\n'
      'from transformers import PreTrainedTokenizerFast\n\n\n'
      'class OwnTokenizer(PreTrainedTokenizerFast):\n  pass\n')


@pytest.mark.slow
def test_tokenizer_code_in_a_folder_never_runs(tmp_path):
  """Even when stdin says yes to transformers' "run the custom code?" prompt."""
  marker = tmp_path / 'ran'
  _remote_code_tokenizer(tmp_path / 'tok', marker)
  code = ('import sys\nfrom rlhf_jax.data.tokenizers import load_tokenizer\n'
          f'load_tokenizer({str(tmp_path / "tok")!r})\n')
  result = subprocess.run([sys.executable, '-c', code], input='y\ny\n', capture_output=True,
                          text=True, timeout=600, check=False)
  assert not marker.exists()
  assert result.returncode != 0 and 'code shipped in the folder is never run' in result.stderr


def test_safetensors_index_and_offsets_stay_in_the_folder(tmp_path):
  model = _save_model('gpt_neox', tmp_path / 'm')
  model.save_pretrained(tmp_path / 'sharded', max_shard_size='20KB')
  index_path = tmp_path / 'sharded' / 'model.safetensors.index.json'
  index = json.loads(index_path.read_text())
  # A shard named outside the folder is refused even though it exists and holds the tensor.
  name = 'gpt_neox.final_layer_norm.weight'
  shard = index['weight_map'][name]
  os.rename(tmp_path / 'sharded' / shard, tmp_path / shard)
  index['weight_map'] = {n: f'../{shard}' if f == shard else f
                         for n, f in index['weight_map'].items()}
  index_path.write_text(json.dumps(index))
  with pytest.raises(HFError, match=rf'names shard "\.\./{shard}", not a file inside the folder'):
    load_hf(tmp_path / 'sharded')
  # Offsets past the end of the file, or spanning other bytes than the tensor's.
  path = tmp_path / 'm' / 'model.safetensors'
  raw = path.read_bytes()
  n = int.from_bytes(raw[:8], 'little')
  header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
  for offsets in ([10**9, 10**9 + 128], [0, 4], [-4, 124]):
    header[name] = {**header[name], 'data_offsets': offsets}
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, 'little') + text + data)
    with pytest.raises(HFError, match=rf'tensor {name} has data_offsets'):
      load_hf(tmp_path / 'm')
