"""Toxicity with and without an instruction to be respectful (paper 4.2, Fig. 7) in the mini world.

  python experiments/instructgpt_mini/toxicity.py [--workdir runs/mini] [--n_prompts 1024]
      [--seed 0] [--out FILE.json]

The paper continued RealToxicityPrompts sentence beginnings with no instruction, with a
"respectful" one and with a "biased" one, and found InstructGPT about as toxic as GPT-3 with no
instruction, ~25% less toxic when asked to be respectful (§1, Fig. 7), and more toxic when asked
to be biased (Fig. 39). Here every complete policy of the workdir (gpt, sft, ppo, ppo_ptx)
continues the world's analog (`world.public_evals.toxicity_prompts`: half cut from its toxic web
documents just before a toxic word, half from neutral ones) under each of the three prompt
variants, sampled as the eval stage samples (its temperature and response length, one random
stream shared by every policy and variant). The rate of inappropriate continuations is the world's
own judgment (`tasks.judge(...).inappropriate`), with 95% Wilson intervals, over all beginnings and
over the toxic ones. The beginnings are drawn from their own seed stream (not the test prompts);
nothing is chosen from the numbers. Differences from the paper: a binary judgment, not Perspective
API's score; the instruction words are the world's (the policies never saw an instruction about
manners in training, as the paper's never saw these prompts either).

Wall time on the 2-core CPU (2026-12-02): 30 seconds for the main job's gpt, sft and ppo_ptx
at the default 1024 beginnings. Measured tables: experiments/instructgpt_mini/README.md.
"""
import argparse
import json
import sys

import numpy as np
from absl import logging

from rlhf_jax import atomic, config_lib, evaluation, metrics, sharding
from rlhf_jax.stages import common
from rlhf_jax.stages import eval as eval_stage
from rlhf_jax.world import public_evals, tasks

POLICIES = 'gpt,sft,ppo,ppo_ptx'
# The beginnings' seed stream, apart from the world's own (its card seed is added).
SEED_STREAM = 7919


def rate(flags: list[bool]) -> dict:
  """{'rate', 'ci', 'n'} of a list of judgments."""
  n = len(flags)
  return {'rate': float(np.mean(flags)) if n else float('nan'),
          'ci': evaluation.wilson_interval(float(sum(flags)), n), 'n': n}


def evaluate(workdir: str, n_prompts: int, seed: int) -> dict:
  """{'policies': {policy: {condition: {'all': rate, 'toxic_source': rate}}}, 'n_prompts',
  'conditions', 'examples'}: each complete policy's inappropriate rate under each variant."""
  config = config_lib.load_config('configs/eval.py')
  config.workdir, config.seed, config.policies = workdir, seed, POLICIES
  card = json.loads(common.data_paths(config)['card'].read_text())
  items = public_evals.toxicity_prompts(card['seed'] * 1000 + SEED_STREAM + seed, n_prompts)
  conditions = list(public_evals.TOXICITY_INSTRUCTIONS)
  prompts = {c: [public_evals.toxicity_prompt(it['prefix'], c) for it in items]
             for c in conditions}
  mesh = common.mesh(config)
  rows = sharding.batch_sharding(mesh)
  names = eval_stage.available_policies(config)
  per_run = -(-n_prompts // config.batch_size)
  progress = metrics.Progress(per_run * len(names) * len(conditions))
  stages = eval_stage.policy_stages(config)
  results, examples, done = {}, {}, 0
  for name in names:
    model, params = eval_stage.load_policy(config, stages[name], mesh)
    tok = common.tokenizer(config, model)
    longest = max(len(tok.encode(p)) + 1 for c in conditions for p in prompts[c])
    if longest > config.data.prompt_len:
      raise config_lib.ConfigError(f'a toxicity prompt has {longest} tokens, more than '
                                   f'data.prompt_len={config.data.prompt_len}')
    results[name] = {}
    for condition in conditions:
      texts = eval_stage.generate(params, model, prompts[condition], tok, config, rows, progress,
                                  done, config.data.prompt_len)
      done += per_run
      flags = [tasks.judge(p, t).inappropriate for p, t in zip(prompts[condition], texts)]
      results[name][condition] = {
          'all': rate(flags),
          'toxic_source': rate([f for f, it in zip(flags, items) if it['toxic_source']])}
      examples.setdefault(condition, []).append({'policy': name, 'prompt': prompts[condition][0],
                                                 'response': texts[0]})
  progress.close()
  return {'policies': results, 'n_prompts': n_prompts, 'conditions': conditions,
          'temperature': config.temperature, 'examples': examples}


def table(report: dict) -> str:
  """Markdown: the inappropriate rate [95% interval] of each policy under each variant, over all
  beginnings and (second line of each cell's pair) over those cut from toxic documents."""
  conditions = report['conditions']
  lines = ['| policy | beginnings | ' + ' | '.join(conditions) + ' |',
           '|---|---|' + '---|' * len(conditions)]
  for name, by_condition in report['policies'].items():
    for subset in ('all', 'toxic_source'):
      cells = []
      for condition in conditions:
        r = by_condition[condition][subset]
        cells.append(f'{r["rate"]:.3f} [{r["ci"][0]:.3f}, {r["ci"][1]:.3f}]')
      lines.append(f'| {name} | {subset} (n={by_condition[conditions[0]][subset]["n"]}) | '
                   + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='runs/mini')
  parser.add_argument('--n_prompts', type=int, default=1024)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=None, help='also write the results as JSON here')
  args = parser.parse_args()
  if args.n_prompts < 2:
    parser.error('--n_prompts must be at least 2 (one toxic and one neutral beginning)')
  logging.set_verbosity(logging.ERROR)  # as main does: orbax logs every restore
  try:
    report = evaluate(args.workdir, args.n_prompts, args.seed)
  except (FileNotFoundError, config_lib.ConfigError) as e:  # no world or no SFT policy there
    sys.exit(f'toxicity.py: {e}')
  if args.out:
    atomic.write_lines(args.out, [json.dumps(report, indent=1) + '\n'])
  print(table(report))


if __name__ == '__main__':
  main()
