"""The sample stage: K completions per RM prompt from a mix of policies (paper section 3.5).

InstructGPT's labelers ranked K = 4..9 outputs per prompt, collected from several models (the
pretrained base, SFT, and later RL policies: a PPO stage samples its kept EMA policy). Here each RM prompt (train and validation split)
gets K drawn from [k_min, k_max] by the seed, its K slots spread over `config.policies` as evenly
as K allows, and each slot is one temperature-`config.temperature` sample of that policy from
the KV-cache sampler (one compiled program per policy geometry; fixed batch shapes).

Writes <workdir>/samples/{train,valid,test}.jsonl as `samples` records with
meta = {"policies": [which policy wrote each completion], "customer", "category"}.
"""
import collections
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from rlhf_jax import checkpoint, config_lib, metrics, sampling, sharding
from rlhf_jax.data import pipeline, records
from rlhf_jax.stages import common
from rlhf_jax.stages import eval as eval_stage

# split -> world file role. The test prompts' samples are ranked by held-out labelers for the
# final RM accuracy only (paper §4.1); nothing is chosen on them.
SPLITS = {'train': 'prompts_rm', 'valid': 'prompts_rm_valid', 'test': 'prompts_test'}


def paths(samples_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """The stage's output files, by split."""
  return {split: samples_dir / f'{split}.jsonl' for split in SPLITS}


def policy_names(config: ml_collections.ConfigDict) -> list[str]:
  """`config.policies`, a comma-separated list of stage names or checkpoint folders."""
  names = [name.strip() for name in config.policies.split(',') if name.strip()]
  if not names:
    raise config_lib.ConfigError('policies: empty; name at least one stage, e.g. "sft"')
  return names


def completion_plan(n_prompts: int, n_policies: int, k_min: int, k_max: int,
                    rng: np.random.Generator) -> list[list[int]]:
  """Which policy writes each completion: one list of K policy indices per prompt.

  K is uniform in [k_min, k_max]. Slots go round-robin from a random first policy, so every
  policy gets floor(K / P) or ceil(K / P) of a prompt's completions; the slots are then shuffled
  so that a completion's position says nothing about its policy.
  """
  plan = []
  for k in rng.integers(k_min, k_max + 1, size=n_prompts):
    start = int(rng.integers(n_policies))
    slots = [(start + j) % n_policies for j in range(k)]
    plan.append([slots[j] for j in rng.permutation(k)])
  return plan


def _fits(tok, prompt: str, prompt_len: int) -> bool:
  # The pipeline's own rule (bos + prompt <= prompt_len). Checking it first means every prompt
  # handed to the pipeline yields a row, so rows map one-to-one onto planned completions.
  return len(tok.encode(prompt)) + 1 <= prompt_len


def _policy(config, name: str, mesh):
  """(model config, sharded params) of a completed LM or PPO stage (its kept EMA policy), in
  the geometry it trained with (its summary's 'model', else this config's; the checkpoint's
  fingerprint must match)."""
  folder = common.stage_path(config.workdir, name)
  summary = checkpoint.read_summary(str(folder))
  if summary is None:
    raise FileNotFoundError(f'policy {name!r}: {folder} is not a completed stage')
  model = ml_collections.ConfigDict(summary['model']) if 'model' in summary else config.model
  model_cfg = config_lib.to_model_config(model)
  return model_cfg, eval_stage.policy_params(str(folder), model_cfg, mesh)


def generate(config, name: str, prompts: list[str], tok, mesh, rng: jax.Array) -> list[str]:
  """One sampled completion of policy `name` for each prompt, in order (prompts must fit).

  Batches are drawn from the pipeline's left-padded 'prompts' kind repeating forever, so the
  last batch is full (fixed shapes: one compilation); its rows past the end are dropped.
  """
  model_cfg, params = _policy(config, name, mesh)
  batch_size, prompt_len = config.batch_size, config.data.prompt_len
  dataset = pipeline.make_dataset(
      'prompts', [{'prompt': p, 'customer': '-', 'category': '-'} for p in prompts], tok,
      batch_size=batch_size, seq_len=config.data.seq_len, prompt_len=prompt_len, shuffle=False,
      shard_index=0, shard_count=1)
  n_batches = -(-len(prompts) // batch_size)
  rows = sharding.batch_sharding(mesh)
  out = [None] * len(prompts)
  progress = metrics.Progress(n_batches)
  print(f'[sample] {name}: {len(prompts)} completions in {n_batches} batches of {batch_size}',
        flush=True)
  for b, batch in zip(range(n_batches), dataset):
    sampled = sampling.sample(
        params, model_cfg, jax.device_put(batch['tokens'], rows),
        jax.device_put(batch['mask'], rows), jax.random.fold_in(rng, b),
        max_new_tokens=config.data.seq_len - prompt_len, temperature=config.temperature,
        eos_id=tok.eos_id, pad_id=tok.pad_id)
    tokens, mask = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                    for x in (sampled.tokens, sampled.mask))
    for row, index in enumerate(batch['index']):
      if b * batch_size + row < len(prompts):  # rows past the end repeat the first prompts
        out[int(index)] = tok.decode(tokens[row][mask[row]].tolist())
    progress.update(b + 1, tokens_per_sec=None)
  progress.close()
  return out


def _plan_split(config, prompts: list[dict], tok, split: int, n_policies: int, limit: int):
  """(kept prompt records, their completion plans, number of too-long prompts dropped)."""
  kept = [r for r in prompts if _fits(tok, r['prompt'], config.data.prompt_len)]
  too_long = len(prompts) - len(kept)
  kept = kept[:limit or None]
  rng = np.random.default_rng([config.seed, split])
  plan = completion_plan(len(kept), n_policies, config.k_min, config.k_max, rng)
  return kept, plan, too_long


def run(config: ml_collections.ConfigDict, samples_dir: pathlib.Path) -> dict:
  """Samples the RM prompt splits (and the test prompts) from every policy; returns the stage
  summary."""
  names = policy_names(config)
  data, mesh = common.data_paths(config), common.mesh(config)
  tok = common.tokenizer(config, config_lib.to_model_config(config.model))
  splits = {}
  limits = {'train': config.max_prompts, 'valid': config.get('max_valid_prompts', 0), 'test': 0}
  for i, (split, role) in enumerate(SPLITS.items()):
    if split == 'test' and not config.get('sample_test', True):
      continue
    splits[split] = _plan_split(config, records.read_records(data[role], 'prompts'), tok, i,
                                len(names), limits[split])
  texts = {split: [[None] * len(p) for p in plan] for split, (_, plan, _) in splits.items()}
  for p, name in enumerate(names):
    # One call per policy over both splits: its parameters are loaded once.
    jobs = [(split, i, j) for split, (_, plan, _) in splits.items()
            for i, policies in enumerate(plan) for j, q in enumerate(policies) if q == p]
    if not jobs:  # more policies than some K: this one drew no slot
      continue
    prompts = [splits[split][0][i]['prompt'] for split, i, _ in jobs]
    rng = jax.random.fold_in(jax.random.key(config.seed), p)
    for (split, i, j), text in zip(jobs, generate(config, name, prompts, tok, mesh, rng)):
      texts[split][i][j] = text
  if samples_dir.exists():
    shutil.rmtree(samples_dir)  # an incomplete earlier attempt (no summary.json)
  summary = {'policies': names}
  for split, (kept, plan, dropped) in splits.items():
    recs = [{'prompt': r['prompt'], 'completions': completions,
             'meta': {'policies': [names[q] for q in policies], 'customer': r['customer'],
                      'category': r['category']}}
            for r, completions, policies in zip(kept, texts[split], plan)]
    records.write_records(paths(samples_dir)[split], 'samples', recs)
    summary[split] = {'prompts': len(recs), 'completions': sum(len(c) for c in plan),
                      'too_long_dropped': dropped,
                      'k_histogram': dict(sorted(collections.Counter(
                          str(len(c)) for c in plan).items()))}
  return summary
