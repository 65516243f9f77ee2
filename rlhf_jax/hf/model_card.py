"""The model card (README.md) of an exported stage: what the model is, how to load it, the
pipeline's eval table and the stage's config and summary."""
import json
from collections.abc import Mapping

import ml_collections

from rlhf_jax import evaluation

_LOAD = {'lm': 'AutoModelForCausalLM', 'scalar': 'AutoModelForSequenceClassification'}
_PIPELINE_TAG = {'lm': 'text-generation', 'scalar': 'text-classification'}


def _demoted(markdown: str) -> str:
  """`markdown` with every heading two levels deeper, so its title sits under a section."""
  return '\n'.join('##' + line if line.startswith('#') else line for line in markdown.split('\n'))


def _what(stage: str, head: str, summary: Mapping, ppo_params: str | None,
          reward_bias: float | None) -> str:
  if head == 'scalar':
    return (f'The reward model of stage `{stage}`. Its score is the reward the PPO stages '
            f'optimised: the raw score minus the normalisation bias {reward_bias:g} (the RM-split '
            'demonstrations\' mean score), so demonstrations score 0 on average. When config.json '
            'has a `score_bias`, add it to the scores (the Hugging Face head has no bias).')
  if ppo_params is None:
    return f'The policy of stage `{stage}`, step {summary.get("checkpoint_step")}.'
  kind = 'EMA' if ppo_params == 'ema' else 'raw (non-EMA)'
  return (f'The {kind} policy of the RL stage `{stage}`, iteration '
          f'{summary.get("checkpoint_step")} ({summary.get("selected_by", "last iteration")}).')


def model_card(stage: str, head: str, summary: Mapping, config: ml_collections.ConfigDict,
               config_source: str, report: Mapping | None, *, trained_config: Mapping | None,
               ppo_params: str | None = None, reward_bias: float | None = None) -> str:
  """README.md of an export.

  Args:
    stage: the stage's name ('sft', 'ppo_ptx', 'rm', ...).
    head: 'lm' (a policy) or 'scalar' (the reward model).
    summary: the stage's summary.json.
    config: the stage config the exporter loaded; `config_source` names it.
    trained_config: the resolved config the stage ran with (its provenance.json), None for a
      stage made before stages recorded it: the card then shows `config`.
    report: the workdir's eval/report.json, or None when the eval stage has not run.
    ppo_params: for an RL stage, which policy was exported ('ema' or 'policy').
    reward_bias: for the reward model, the bias subtracted from its raw scores.
  """
  lines = ['---', 'library_name: transformers', f'pipeline_tag: {_PIPELINE_TAG[head]}',
           'tags: [rlhf, instructgpt, rlhf_jax]', '---', '',
           f'# rlhf_jax `{stage}`', '', _what(stage, head, summary, ppo_params, reward_bias), '',
           'Exported by `python -m rlhf_jax.hf export`. Load it with transformers:', '',
           '```python', f'from transformers import AutoTokenizer, {_LOAD[head]}',
           'tokenizer = AutoTokenizer.from_pretrained(PATH)',
           f'model = {_LOAD[head]}.from_pretrained(PATH)', '```', '', '## Evaluation', '']
  if report is None:
    lines.append('The workdir holds no eval report (eval/report.json): the eval stage has not run.')
  else:
    which = f', their {report.get("ppo_params")} params' if 'ppo_params' in report else ''
    lines += [f'The pipeline\'s eval report (RL policies by stage name{which}):', '',
              _demoted(evaluation.render_markdown(report))]
  if trained_config is not None:
    lines += ['', '## Config', '', 'The resolved config the stage ran with (its provenance.json):',
              '', '```json', json.dumps(trained_config, indent=2, sort_keys=True), '```']
  else:
    lines += ['', '## Config', '',
              f'`{config_source}` as the exporter loaded it; this stage was made before stages '
              'recorded their config, so overrides given to the training command are not '
              'known, but the model geometry in the summary below is the one trained.', '',
              '```json', config.to_json_best_effort(indent=2), '```']
  lines += ['', '## Training summary (summary.json)', '', '```json',
            json.dumps(summary, indent=2), '```', '']
  return '\n'.join(lines)
