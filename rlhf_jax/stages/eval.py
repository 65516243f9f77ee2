"""The eval stage: every available policy on the held-out test prompts, judged by the held-out
labelers against the SFT baseline, plus the alignment tax (InstructGPT section 3.6, App. D).

Writes <workdir>/eval/report.json, report.md, responses.jsonl and PNG plots (see evaluation.py).
"""
import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import (
  checkpoint,
  config_lib,
  evaluation,
  losses,
  metrics,
  sampling,
  sft,
  sharding,
)
from rlhf_jax.data import pipeline, records, tokenizers
from rlhf_jax.models import LanguageModel, ModelConfig
from rlhf_jax.stages import common, layout
from rlhf_jax.world import build, corpus

# policy -> the stage whose parameters it samples (gpt_prompted: gpt behind the few-shot prefix).
POLICY_STAGES = {'gpt': 'pretrain', 'gpt_prompted': 'pretrain', 'sft': 'sft', 'ppo': 'ppo',
                 'ppo_ptx': 'ppo_ptx'}
PPO_PARAMS = {'ema': 'ema_params', 'policy': 'policy.params'}  # config.ppo_params -> state field


def policy_stages(config: ml_collections.ConfigDict) -> dict[str, str]:
  """Policy name -> the stage (or absolute folder) it samples: POLICY_STAGES, plus the
  `extra_policies` ('name=FOLDER,...': other checkpoints sampled like gpt, e.g. a larger base
  model trained in another workdir)."""
  out = dict(POLICY_STAGES)
  for pair in filter(None, (p.strip() for p in config.get('extra_policies', '').split(','))):
    name, sep, folder = (x.strip() for x in pair.partition('='))
    if not sep or not name or not folder or name in out:
      raise config_lib.ConfigError(f'extra_policies entry {pair!r}: expected NAME=FOLDER with a '
                                   f'new NAME (not one of {", ".join(out)})')
    out[name] = str(pathlib.Path(folder).resolve())
  return out


def available_policies(config: ml_collections.ConfigDict) -> list[str]:
  """The configured policies whose stage is complete, in config order; SFT must be one.
  Extra policies are always evaluated, after the configured ones."""
  stages = policy_stages(config)
  names = [n.strip() for n in config.policies.split(',') if n.strip()]
  unknown = sorted(set(names) - set(POLICY_STAGES))
  if unknown or evaluation.BASELINE not in names:
    raise config_lib.ConfigError(f'policies: {config.policies!r} must name the baseline '
                                 f'{evaluation.BASELINE!r} and only {", ".join(POLICY_STAGES)}')
  extras = [n for n in stages if n not in POLICY_STAGES]
  for name in extras:
    if not checkpoint.is_complete(stages[name]):
      raise FileNotFoundError(f'{stages[name]}: extra policy {name!r} is not a complete stage '
                              '(no summary.json)')
  present = [n for n in names if checkpoint.is_complete(
      str(common.stage_path(config.workdir, stages[n])))]
  if evaluation.BASELINE not in present:
    raise FileNotFoundError(f'{config.workdir}/{evaluation.BASELINE}: the baseline policy is not '
                            'trained (no summary.json)')
  skipped = [n for n in names if n not in present]
  if skipped:
    print(f'[eval] skipping {", ".join(skipped)}: stage not complete', flush=True)
  return present + extras


def load_policy(config: ml_collections.ConfigDict, stage: str, mesh) -> tuple[ModelConfig, Any]:
  """(geometry, params) of a completed stage's policy; PPO stages give their EMA params unless
  `config.ppo_params == 'policy'`."""
  stage_dir = str(common.stage_path(config.workdir, stage))
  # A summary without 'model' (written before stages recorded it) means this config's geometry;
  # the fingerprint check below still rejects a checkpoint of another geometry.
  model = config_lib.to_model_config(ml_collections.ConfigDict(
      checkpoint.read_summary(stage_dir).get('model') or config.model.to_dict()))
  if model.max_len < config.few_shot_prompt_len + config.data.response_len:
    raise config_lib.ConfigError(
        f'few_shot_prompt_len {config.few_shot_prompt_len} + data.response_len '
        f'{config.data.response_len} exceeds {stage} model.max_len={model.max_len}')
  return model, policy_params(stage_dir, model, mesh, config.ppo_params)


def policy_params(stage_dir: str, model: ModelConfig, mesh, ppo_params: str = 'ema') -> Any:
  """The policy parameters of a completed stage folder, sharded: an LM stage's 'params'; a PPO
  stage's (summary 'stage') EMA or raw policy (`ppo_params`), of its kept iteration."""
  summary = checkpoint.read_summary(stage_dir)
  if summary is None:
    raise FileNotFoundError(f'{stage_dir}: stage not complete (no summary.json)')
  field = 'params'
  if summary.get('stage') in config_lib.PPO_STAGES:
    # A run with validation keeps its selected iteration's EMA and raw policy under 'params'.
    field = ('params.' if 'params_from' in summary else '') + PPO_PARAMS[ppo_params]
  abstract, shardings = common.param_shardings(model, 'lm', mesh)
  return checkpoint.load_params(stage_dir, abstract, shardings, field=field,
                                fingerprint=checkpoint.fingerprint({'policy': (model, 'lm')}))


def left_pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[N, length] tokens and mask, rows right-aligned; a longer row keeps its last `length` ids."""
  tokens = np.full((len(rows), length), pad_id, np.int32)
  for i, ids in enumerate(rows):
    ids = ids[-length:]
    tokens[i, length - len(ids):] = ids
  lengths = np.array([min(len(r), length) for r in rows])
  return tokens, np.arange(length)[None, :] >= length - lengths[:, None]


def _batches(n: int, batch_size: int):
  """Row indices of each batch; the last is padded with row n - 1 to keep one compiled shape."""
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    yield np.minimum(idx, n - 1), min(batch_size, n - start)


def generate(params, model: ModelConfig, prompts: list[str], tok, config, rows,
             progress: metrics.Progress, done: int, prompt_len: int) -> list[str]:
  """Sampled responses (text, EOS and after dropped) to `prompts`, the same key for every policy,
  so policies are compared on common random numbers."""
  ids = [[tok.bos_id] + tok.encode(p) for p in prompts]
  tokens, mask = left_pad(ids, prompt_len, tok.pad_id)
  key = jax.random.key(config.seed)
  texts = []
  for b, (idx, n_real) in enumerate(_batches(len(prompts), config.batch_size)):
    out = sampling.sample(params, model, jax.device_put(tokens[idx], rows),
                          jax.device_put(mask[idx], rows), jax.random.fold_in(key, b),
                          max_new_tokens=config.data.response_len, temperature=config.temperature,
                          eos_id=tok.eos_id, pad_id=tok.pad_id)
    out_tokens, out_mask = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                            for x in (out.tokens, out.mask))
    texts += [tok.decode(t[m]) for t, m in zip(out_tokens[:n_real], out_mask[:n_real])]
    progress.update(done + b + 1)
  return texts


@functools.partial(jax.jit, static_argnames='model')
def _choice_logprobs(params, tokens, mask, score_mask, model: ModelConfig):  # -> [B]
  """Mean log-prob of each row's scored tokens (a multiple-choice continuation)."""
  logits = LanguageModel(model).apply({'params': params}, tokens, mask)  # [B, T, V]
  logprobs = losses.token_logprobs(logits[:, :-1], tokens[:, 1:])  # [B, T - 1]
  scored = score_mask[:, 1:]
  return jnp.sum(logprobs * scored, axis=-1) / jnp.maximum(jnp.sum(scored, axis=-1), 1)


@functools.partial(jax.jit, static_argnames='model')
def _nll_sums(params, batch, model: ModelConfig):
  return sft.sft_eval_step(params, batch, model=LanguageModel(model))


def _continuation_ids(tok, context: str, choice: str) -> tuple[list[int], list[int]]:
  """(bos + context ids, choice ids) for the text `context + ' ' + choice`.

  As lm-evaluation-harness: the choice's ids are what follows the context's ids in the whole
  text's encoding, so a tokenizer that marks word starts (sentencepiece without a dummy prefix,
  GPT-2 BPE) scores the choice's in-text tokens ('_honey', not 'h' 'oney').
  """
  context_ids = tok.encode(context)
  whole = tok.encode(f'{context} {choice}')
  if whole[:len(context_ids)] != context_ids:  # the tokenizer merged across the space
    return [tok.bos_id] + context_ids, tok.encode(f' {choice}')
  return [tok.bos_id] + context_ids, whole[len(context_ids):]


def choice_rows(items: list[dict], tok) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every (item, choice) as bos + context + choice, right-padded: tokens, mask, and score_mask
  on the choice's tokens."""
  seqs = [_continuation_ids(tok, item['context'], choice)
          for item in items for choice in item['choices']]
  length = -(-max(len(c) + len(x) for c, x in seqs) // 16) * 16  # few distinct compiled shapes
  tokens = np.full((len(seqs), length), tok.pad_id, np.int32)
  score = np.zeros((len(seqs), length), bool)
  for i, (context, choice) in enumerate(seqs):
    tokens[i, :len(context) + len(choice)] = context + choice
    score[i, len(context):len(context) + len(choice)] = True
  return tokens, tokens != tok.pad_id, score


def _score_rows(params, model: ModelConfig, rows_data, batch_size: int, rows) -> list[float]:
  """_choice_logprobs of every row of (tokens, mask, score_mask), in batches."""
  scores = []
  for idx, n_real in _batches(len(rows_data[0]), batch_size):
    out = _choice_logprobs(params, *(jax.device_put(x[idx], rows) for x in rows_data), model)
    scores += list(np.asarray(multihost_utils.process_allgather(out, tiled=True))[:n_real])
  return scores


def public_eval_accuracy(params, model: ModelConfig, evals: dict[str, list[dict]], tok,
                         batch_size: int, rows) -> dict[str, float]:
  """Zero-shot accuracy per task: the choice with the highest mean per-token log-prob wins.

  Each task is scored at its own padded length (cloze items are a few tokens, stories dozens).
  """
  accuracy = {}
  for task, items in evals.items():
    scores = _score_rows(params, model, choice_rows(items, tok), batch_size, rows)
    per_item, start = [], 0
    for item in items:
      per_item.append(scores[start:start + len(item['choices'])])
      start += len(item['choices'])
    accuracy[task] = evaluation.choice_accuracy(per_item, [i['answer'] for i in items])
  return accuracy


def pretrain_loss(params, model: ModelConfig, batches: list[dict], rows) -> float:
  """Mean NLL per token (nats) on held-out pretraining text: the pretraining-distribution loss."""
  total = common.sum_metrics(functools.partial(_nll_sums, model=model), params, batches, rows)
  return total['sft/loss_sum'] / max(total['sft/tokens'], 1.0)


def _inputs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Test prompts, held-out judges, tokenizer, few-shot prefix and alignment-tax data."""
  paths = common.data_paths(config)
  tok = tokenizers.load_tokenizer(paths['tokenizer'])
  test = records.read_records(paths['prompts_test'], 'prompts')
  test = test[:config.max_test_prompts or None]
  card = json.loads(paths['card'].read_text())
  # The card's world seed and pool size rebuild exactly the pool the world stage measured.
  pool = build.labeler_pool(card['seed'], 'heldout', card['labelers']['heldout'])
  evals = json.loads(paths['public_evals'].read_text())
  # Packed as in pretraining: full rows, so every batch is real text and none is padding.
  text = pipeline.make_dataset('text', paths['pretrain_valid'], tok, batch_size=config.batch_size,
                               seq_len=config.data.seq_len, shuffle=False, num_epochs=1,
                               shard_index=0, shard_count=1, pack=True)
  n_text = config.pretrain_eval_batches or None
  return {'tok': tok, 'test': test, 'judges': evaluation.assign_labelers(pool, len(test),
                                                                          config.seed),
          'n_labelers': len(pool), 'prefix': paths['few_shot_prefix'].read_text(),
          'evals': {task: items[:config.public_eval_items or None]
                    for task, items in sorted(evals.items())},
          'text': [batch for _, batch in zip(range(n_text or 10**9), text)]}


def _policy_prompts(name: str, inputs: dict) -> list[str]:
  prompts = [r['prompt'] for r in inputs['test']]
  if name == 'gpt_prompted':
    return [corpus.few_shot_prompt(p, inputs['prefix']) for p in prompts]
  return prompts


def _run_policies(config, names: list[str], inputs: dict, mesh) -> tuple[dict, dict]:
  """({policy: responses}, {stage: (pretrain loss, public evals)}) with a progress display."""
  rows = sharding.batch_sharding(mesh)
  tok = inputs['tok']
  per_policy = -(-len(inputs['test']) // config.batch_size)
  progress = metrics.Progress(per_policy * len(names))
  responses, tax, loaded = {}, {}, {}
  stages = policy_stages(config)
  for i, name in enumerate(names):
    stage = stages[name]
    if stage not in loaded:
      loaded = {stage: load_policy(config, stage, mesh)}  # one policy in memory at a time
    model, params = loaded[stage]
    prompt_len = (config.few_shot_prompt_len if name == 'gpt_prompted'
                  else config.data.prompt_len)
    texts = generate(params, model, _policy_prompts(name, inputs), tok, config, rows, progress,
                     i * per_policy, prompt_len)
    if name == 'gpt_prompted':
      texts = [corpus.cut_few_shot_answer(t) for t in texts]
    responses[name] = texts
    if stage not in tax:  # gpt_prompted shares gpt's parameters, hence its alignment tax
      tax[stage] = (pretrain_loss(params, model, inputs['text'], rows),
                    public_eval_accuracy(params, model, inputs['evals'], tok, config.batch_size,
                                         rows))
  progress.close()
  return responses, tax


def _report(config, names, inputs, responses, tax) -> dict:
  prompts = [r['prompt'] for r in inputs['test']]
  categories = [r['category'] for r in inputs['test']]
  policies, stages = {}, policy_stages(config)
  for name in names:
    judged = evaluation.judge_responses(inputs['judges'], prompts, responses[name],
                                        responses[evaluation.BASELINE])
    policies[name] = evaluation.policy_entry(judged, categories, *tax[stages[name]])
    if stages[name] in config_lib.PPO_STAGES:  # which iteration was evaluated, and why
      trained = checkpoint.read_summary(str(common.stage_path(config.workdir, stages[name])))
      policies[name]['iteration'] = trained.get('checkpoint_step')
      policies[name]['selected_by'] = trained.get('selected_by', 'last iteration')
  examples = [{'prompt': prompts[i], 'category': categories[i],
               'responses': {n: responses[n][i] for n in names}}
              for i in range(min(config.examples, len(prompts)))]
  return {'policies': policies, 'baseline': evaluation.BASELINE, 'n_prompts': len(prompts),
          'temperature': config.temperature, 'labelers': inputs['n_labelers'],
          'ppo_params': config.ppo_params, 'examples': examples,
          'seed': config.seed,  # which judge each prompt drew: the review page re-derives them
          'training_curves': training_curves(config.workdir),
          'stage_seconds': stage_seconds(config.workdir)}


def stage_seconds(workdir: str) -> dict[str, float]:
  """stage -> the wall time its summary records, for the complete stages of `workdir` before
  the evaluation, in pipeline order."""
  done = {stage: layout.summary(workdir, stage) for stage in layout.PIPELINE if stage != 'eval'}
  return {stage: s['seconds'] for stage, s in done.items() if s and 'seconds' in s}


TRAINING_STAGES = ('pretrain', 'sft', 'sft_init', 'pretrain_rm', 'sft_rm', 'rm', 'ppo', 'ppo_ptx')


def training_curves(workdir: str) -> dict[str, dict[str, list[list[float]]]]:
  """stage -> metric -> [[step, value], ...] of the evaluation.CURVE_METRICS that the complete
  training stages of `workdir` logged, in pipeline order."""
  curves = {}
  for stage in TRAINING_STAGES:
    folder = common.stage_path(workdir, stage)
    log = folder / metrics.METRICS_FILE
    if checkpoint.read_summary(str(folder)) is None or not log.exists():
      continue
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    logged = {name: [[row['step'], row[name]] for row in rows if name in row]
              for name in evaluation.CURVE_METRICS}
    if any(logged.values()):
      curves[stage] = {name: points for name, points in logged.items() if points}
  return curves


def _write(stage_dir: pathlib.Path, report: dict, inputs: dict, responses: dict) -> None:
  stage_dir.mkdir(parents=True, exist_ok=True)
  (stage_dir / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
  (stage_dir / 'report.md').write_text(evaluation.render_markdown(report) + '\n')
  with open(stage_dir / 'responses.jsonl', 'w') as f:
    f.writelines(json.dumps({**record, 'responses': {n: r[i] for n, r in responses.items()}}) + '\n'
                 for i, record in enumerate(inputs['test']))
  evaluation.write_plots(report, str(stage_dir))


def _headline(report: dict, path: pathlib.Path) -> str:
  row = '  {:<13} {:>10} {:<16} {:>6} {:>7} {:>13}'
  lines = [f'[eval] report: {path}',
           row.format('policy', 'win vs sft', '95% CI', 'Likert', 'halluc.', 'pretrain loss')]
  for name, p in report['policies'].items():
    lo, hi = p['win_rate_ci']
    halluc = '-' if p['hallucination_rate'] is None else f'{p["hallucination_rate"]:.3f}'
    lines.append(row.format(name, f'{p["win_rate_vs_sft"]:.3f}', f'[{lo:.3f}, {hi:.3f}]',
                            f'{p["likert"]:.2f}', halluc, f'{p["pretrain_loss"]:.4f}'))
  lines += [f'[eval] {line}' for line in evaluation.paper_comparison(report)]
  if report.get('stage_seconds'):
    lines.append(f'[eval] {evaluation.wall_time_line(report["stage_seconds"])}')
  return '\n'.join(lines)


def print_headline(stage_dir: pathlib.Path) -> None:
  """Prints a complete eval stage's headline table again (a rerun that reuses it)."""
  report = json.loads((stage_dir / 'report.json').read_text())
  print(_headline(report, stage_dir / 'report.md'), flush=True)


def run(config: ml_collections.ConfigDict, stage_dir: pathlib.Path) -> dict:
  """Evaluates every available policy; writes the report; returns the stage summary."""
  if config.ppo_params not in PPO_PARAMS:
    raise config_lib.ConfigError(f'ppo_params {config.ppo_params!r}: use one of '
                                 f'{", ".join(PPO_PARAMS)}')
  names = available_policies(config)
  inputs = _inputs(config)
  print(f'[eval] {", ".join(names)} on {len(inputs["test"])} test prompts (T = '
        f'{config.temperature}), held-out pool of {inputs["n_labelers"]}', flush=True)
  start = time.time()
  responses, tax = _run_policies(config, names, inputs, common.mesh(config))
  report = _report(config, names, inputs, responses, tax)
  if jax.process_index() == 0:
    _write(stage_dir, report, inputs, responses)
  print(f'[eval] {time.time() - start:.1f}s for sampling, judging and the alignment-tax evals',
        flush=True)
  print(_headline(report, stage_dir / 'report.md'), flush=True)
  return {'report': str(stage_dir / 'report.json'), 'policies': names,
          'win_rate_vs_sft': {n: p['win_rate_vs_sft'] for n, p in report['policies'].items()},
          'stage_seconds': report['stage_seconds']}
