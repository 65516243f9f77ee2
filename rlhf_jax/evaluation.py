"""Evaluation math and reporting (InstructGPT section 3.6, App. D): win rates with 95% intervals,
Likert means, metadata rates, multiple-choice accuracy, the report, its markdown and its plots.

Everything here works on results already judged or scored (the `eval` stage produces them), so it
is plain Python and numpy:

    outcomes = [pair_outcome(labeler.rank(p, [ours, sft])) for ...]   # 1 win, 0.5 tie, 0 loss
    rate, (lo, hi) = win_rate(outcomes)
"""
import math
import os
import random
from collections.abc import Mapping, Sequence

import numpy as np

# Figures drawn without pyplot render to PNG with the Agg canvas and never touch the user's
# interactive backend (a notebook keeps its inline plots).
from matplotlib.figure import Figure

from rlhf_jax.world import labelers, tasks

BASELINE = 'sft'
Z_95 = 1.959963984540054  # two-sided 95% normal quantile
# Metadata flags plotted and tabled, in order: (report key, label); the arrow says which way is
# better.
METADATA_RATES = (('fails_instruction_rate', 'fails instruction ↓'),
                  ('hallucination_rate', 'hallucination (closed domain) ↓'),
                  ('inappropriate_rate', 'inappropriate ↓'),
                  ('constraint_satisfied_rate', 'satisfies constraint ↑'))
# Where the mini world's measurements against the paper's findings are explained.
EXPERIMENTS_README = 'experiments/instructgpt_mini/README.md'
# The paper's ordering of its policies by labeler preference (Fig. 1), worst first.
PAPER_ORDER = ('gpt', 'gpt_prompted', 'sft', 'ppo_ptx')


def pair_outcome(ranks: Sequence[int]) -> float:
  """A labeler's ranks of (policy response, baseline response), 0 best -> 1 win, 0.5 tie, 0 loss."""
  ours, theirs = ranks
  return 1.0 if ours < theirs else 0.5 if ours == theirs else 0.0


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
  """Wilson score interval for a proportion successes / n (successes may be fractional).

  Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 or n successes.
  With no trials the proportion is unknown: (0, 1).
  """
  if n == 0:
    return 0.0, 1.0
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # At 0 or n successes the end is exactly 0 or 1; centre -+ half would leave a rounding residue
  # that puts the proportion itself outside its interval.
  low = 0.0 if successes <= 0 else max(0.0, centre - half)
  high = 1.0 if successes >= n else min(1.0, centre + half)
  return low, high


def win_rate(outcomes: Sequence[float]) -> tuple[float, tuple[float, float]]:
  """(win rate, 95% Wilson interval) of per-prompt outcomes from `pair_outcome`.

  A tie counts as half a win (the paper's labeling UI encourages ties between outputs of similar
  quality, so a policy identical to the baseline scores exactly 0.5); in the interval it is half a
  success of one trial.
  """
  n = len(outcomes)
  wins = float(np.sum(outcomes)) if n else 0.0
  return (wins / n if n else float('nan')), wilson_interval(wins, n)


def _mean(values: Sequence[float]) -> float | None:
  """Mean, or None (JSON null) when there is nothing to average."""
  return float(np.mean(values)) if len(values) else None


def likert_mean(scores: Sequence[int]) -> float | None:
  """Mean overall quality on the paper's 1-7 Likert scale."""
  return _mean(scores)


def metadata_rates(metadata: Sequence[Mapping[str, bool | None]],
                   categories: Sequence[str]) -> dict[str, float | int | None]:
  """Rates of the paper's Table 3 flags over one policy's responses.

  Hallucination counts on closed-domain tasks only (the paper's definition: making up information
  not in the input), constraint satisfaction only where the prompt sets a constraint.

  Args:
    metadata: per response, `Labeler.metadata` (satisfies_constraint None when unconstrained).
    categories: per response, the prompt's task family.
  """
  closed = [m['hallucination'] for m, c in zip(metadata, categories) if c in tasks.CLOSED_DOMAIN]
  constrained = [m['satisfies_constraint'] for m in metadata
                 if m['satisfies_constraint'] is not None]
  return {
      'fails_instruction_rate': _mean([m['fails_instruction'] for m in metadata]),
      'hallucination_rate': _mean(closed),
      'inappropriate_rate': _mean([m['inappropriate'] for m in metadata]),
      'constraint_satisfied_rate': _mean(constrained),
      'n_closed_domain': len(closed),
      'n_constrained': len(constrained),
  }


def choice_accuracy(choice_scores: Sequence[Sequence[float]], answers: Sequence[int]) -> float:
  """Multiple-choice accuracy: each item picks its choice of highest score (App. D: the average
  per-token log-probability of the choice; the paper's v1 text says "lowest", a misprint)."""
  picks = [int(np.argmax(scores)) for scores in choice_scores]
  return float(np.mean([p == a for p, a in zip(picks, answers)]))


def assign_labelers(pool: Sequence[labelers.Labeler], n_prompts: int,
                    seed: int) -> list[labelers.Labeler]:
  """One labeler per prompt, drawn at random from `pool`; the same for every policy, so each
  prompt's comparisons are judged by one person."""
  rng = random.Random(seed)
  return [rng.choice(pool) for _ in range(n_prompts)]


def judge_responses(judges: Sequence[labelers.Labeler], prompts: Sequence[str],
                    responses: Sequence[str], baseline: Sequence[str]) -> dict[str, list]:
  """Per prompt: outcome against the baseline's response, Likert score and metadata flags.

  Args:
    judges: the labeler of each prompt (`assign_labelers`).
    prompts, responses, baseline: aligned lists, one entry per prompt.

  Returns:
    {'outcomes': [1 / 0.5 / 0], 'likerts': [1..7], 'metadata': [Labeler.metadata dicts]}.
  """
  out = {'outcomes': [], 'likerts': [], 'metadata': []}
  for labeler, prompt, ours, theirs in zip(judges, prompts, responses, baseline):
    out['outcomes'].append(pair_outcome(labeler.rank(prompt, [ours, theirs])))
    out['likerts'].append(labeler.likert(prompt, ours))
    out['metadata'].append(labeler.metadata(prompt, ours))
  return out


def policy_entry(judged: Mapping[str, list], categories: Sequence[str], pretrain_loss: float,
                 public_evals: Mapping[str, float]) -> dict:
  """One policy's report entry (a value of report.json's "policies") from `judge_responses`."""
  outcomes = judged['outcomes']
  rate, interval = win_rate(outcomes)
  return {'win_rate_vs_sft': rate, 'win_rate_ci': list(interval),
          'likert': likert_mean(judged['likerts']),
          **metadata_rates(judged['metadata'], categories), 'pretrain_loss': pretrain_loss,
          'public_evals': dict(public_evals), 'n_prompts': len(outcomes),
          'ties': int(sum(o == 0.5 for o in outcomes))}


def _cell(value, fmt: str = '{:.3f}') -> str:
  return '-' if value is None or (isinstance(value, float) and math.isnan(value)) else (
      fmt.format(value))


def _one_line(text: str) -> str:
  """Sampled text may hold newlines, which would break a markdown list item."""
  return ' '.join(text.split())


def paper_comparison(report: Mapping) -> list[str]:
  """Sentences saying, for each finding of the paper this report can check, whether it holds.

  The findings: labelers prefer PPO-ptx to SFT (Fig. 1; by the 95% interval of its win rate),
  the order GPT < prompted GPT < SFT < PPO-ptx (Fig. 1; by point estimates), PPO-ptx
  hallucinating less than GPT on closed-domain tasks (§1: 21% against 41%), and the ptx term
  lowering PPO's loss on the pretraining distribution (§4.2). A finding whose policies are not
  in the report is skipped; when one does not hold, the last sentence says where to read why.
  """
  policies = report['policies']
  lines, held = [], []

  def say(holds: bool, text: str) -> None:
    held.append(holds)
    lines.append(text)

  if 'ppo_ptx' in policies:
    p = policies['ppo_ptx']
    rate, (lo, hi) = p['win_rate_vs_sft'], p['win_rate_ci']
    measured = f'PPO-ptx wins {rate:.3f} [{lo:.3f}, {hi:.3f}] against SFT'
    if lo > 0.5:
      say(True, f'Reproduced: labelers prefer PPO-ptx to SFT ({measured}; paper, Fig. 1: at '
                'every model size).')
    elif hi < 0.5:
      say(False, f'Not reproduced: labelers prefer SFT to PPO-ptx ({measured}; paper, Fig. 1: '
                 'PPO-ptx is preferred at every model size).')
    else:
      say(False, f'Not shown: {measured}, within the noise of a tie (paper, Fig. 1: PPO-ptx '
                 'is preferred at every model size).')
  present = [name for name in PAPER_ORDER if name in policies]
  if len(present) > 1:
    rates = [policies[name]['win_rate_vs_sft'] for name in present]
    order = ' < '.join(present)
    inverted = [f'{a} {ra:.3f} >= {b} {rb:.3f}'
                for (a, ra), (b, rb) in zip(zip(present, rates), zip(present[1:], rates[1:]))
                if ra >= rb]
    say(not inverted, f'The paper\'s order {order} (Fig. 1) '
        + ('holds by point estimate.' if not inverted else
           'does not hold by point estimate: ' + ', '.join(inverted) + '.'))
  rates = {name: policies[name].get('hallucination_rate') for name in ('gpt', 'ppo_ptx')
           if name in policies}
  if len(rates) == 2 and None not in rates.values():
    ours, base = rates['ppo_ptx'], rates['gpt']
    how = 'less than' if ours < base else 'as much as' if ours == base else 'more than'
    say(ours < base, f'PPO-ptx hallucinates {how} GPT on closed-domain prompts ({ours:.3f} '
                     f'against {base:.3f}; paper: 21% against 41%).')
  if 'ppo' in policies and 'ppo_ptx' in policies:
    ptx, ppo = policies['ppo_ptx']['pretrain_loss'], policies['ppo']['pretrain_loss']
    say(ptx < ppo, f'The ptx term {"lowers" if ptx < ppo else "does not lower"} PPO\'s loss on '
                   f'the pretraining distribution ({ptx:.4f} against {ppo:.4f}; paper §4.2: '
                   'PPO-ptx reduces the alignment tax).')
  if not all(held):
    lines.append(f'Why the mini world differs from the paper, with measurements: '
                 f'{EXPERIMENTS_README}.')
  return lines


def wall_time_line(seconds: Mapping[str, float]) -> str:
  """'wall time (minutes): world 0.1, pretrain 15.7, ...; 104.0 in all before the evaluation'."""
  parts = ', '.join(f'{stage} {t / 60:.1f}' for stage, t in seconds.items())
  return f'wall time (minutes): {parts}; {sum(seconds.values()) / 60:.1f} in all before the evaluation'


def render_markdown(report: Mapping) -> str:
  """report.md: settings, one table row per policy, public evals, and example responses."""
  policies = report['policies']
  settings = (f'{report["n_prompts"]} held-out test prompts, responses sampled at temperature '
              f'{report["temperature"]}, judged by the held-out labeler pool '
              f'({report["labelers"]} labelers, one per prompt). Win rate is against the '
              f'`{BASELINE}` baseline with a 95% Wilson interval; a tie counts half. '
              'Hallucination is over closed-domain prompts only.')
  header = ('| policy | win rate vs sft ↑ | 95% CI | Likert ↑ | fails instr. ↓ | hallucination ↓ '
            '| inappropriate ↓ | constraint ok ↑ | pretrain loss ↓ |')
  chosen = [f'`{name}` at iteration {p["iteration"]} ({p["selected_by"]})'
             for name, p in policies.items() if 'iteration' in p]
  if chosen:
    settings += (' RL policies are evaluated at the iteration chosen on validation prompts: '
                 + ', '.join(chosen) + '.')
  comparison = paper_comparison(report)
  lines = ['# InstructGPT-mini evaluation', '', settings, '']
  if comparison:
    lines += ['## Against the paper', ''] + [f'- {line}' for line in comparison] + ['']
  lines += [header, '|' + '---|' * 9]
  for name, p in policies.items():
    lo, hi = p['win_rate_ci']
    lines.append(f'| {name} | {_cell(p["win_rate_vs_sft"])} | [{lo:.3f}, {hi:.3f}] | '
                 f'{_cell(p["likert"], "{:.2f}")} | {_cell(p["fails_instruction_rate"])} | '
                 f'{_cell(p["hallucination_rate"])} | {_cell(p["inappropriate_rate"])} | '
                 f'{_cell(p.get("constraint_satisfied_rate"))} | {_cell(p["pretrain_loss"])} |')
  eval_names = sorted({t for p in policies.values() for t in p['public_evals']})
  lines += ['', '## Zero-shot public evals (accuracy)', '',
            '| policy | ' + ' | '.join(eval_names) + ' |', '|' + '---|' * (len(eval_names) + 1)]
  for name, p in policies.items():
    cells = ' | '.join(_cell(p['public_evals'].get(t)) for t in eval_names)
    lines.append(f'| {name} | {cells} |')
  if report.get('stage_seconds'):
    lines += ['', '## Wall time', '', wall_time_line(report['stage_seconds'])]
  lines += ['', '## Plots', ''] + [f'![{name[:-4]}]({name})' for name in plot_names(report)]
  lines += ['', '## Example responses', '']
  for i, example in enumerate(report.get('examples', []), 1):
    lines += [f'**Prompt {i}** ({example["category"]}): {_one_line(example["prompt"])}', '']
    lines += [f'- `{name}`: {_one_line(text) or "(empty)"}'
              for name, text in example['responses'].items()]
    lines.append('')
  return '\n'.join(lines)


def _bar_positions(n_groups: int, n_bars: int, width: float = 0.8):
  """x of each group and the offset of each bar inside it."""
  x = np.arange(n_groups)
  return x, (np.arange(n_bars) - (n_bars - 1) / 2) * width / n_bars, width / n_bars


def _plot_win_rate(report: Mapping, path: str) -> None:
  policies = report['policies']
  names = list(policies)
  fig = Figure(figsize=(1.2 * len(names) + 2.5, 3.8))
  ax = fig.subplots()
  rates = np.array([policies[n]['win_rate_vs_sft'] for n in names])
  ci = np.array([policies[n]['win_rate_ci'] for n in names])
  bars = ax.bar(names, rates, color='tab:blue', yerr=[rates - ci[:, 0], ci[:, 1] - rates],
                capsize=5)
  ax.bar_label(bars, fmt='%.2f', label_type='center', color='white')
  ax.axhline(0.5, color='grey', linestyle='--', linewidth=1)
  ax.set(ylim=(0, 1), ylabel=f'win rate vs {BASELINE}',
         title=f'Held-out labelers, {report["n_prompts"]} test prompts (95% Wilson CI)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _plot_metadata(report: Mapping, path: str) -> None:
  policies = report['policies']
  fig = Figure(figsize=(1.6 * len(METADATA_RATES) + 3, 3.8))
  ax = fig.subplots()
  x, offsets, width = _bar_positions(len(METADATA_RATES), len(policies))
  for (name, p), offset in zip(policies.items(), offsets):
    values = [p.get(key) for key, _ in METADATA_RATES]
    ax.bar(x + offset, [np.nan if v is None else v for v in values], width, label=name)
  ax.set_xticks(x, [label for _, label in METADATA_RATES], fontsize=8)
  ax.set(ylim=(0, 1), ylabel='rate',
         title='Metadata (held-out labelers; ↓ lower is better, ↑ higher is better)')
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _plot_alignment_tax(report: Mapping, path: str) -> None:
  policies = report['policies']
  eval_names = sorted({t for p in policies.values() for t in p['public_evals']})
  fig = Figure(figsize=(11, 3.8))
  acc_ax, loss_ax = fig.subplots(1, 2, gridspec_kw={'width_ratios': [3, 1]})
  x, offsets, width = _bar_positions(len(eval_names), len(policies))
  for (name, p), offset in zip(policies.items(), offsets):
    acc_ax.bar(x + offset, [p['public_evals'].get(t, np.nan) for t in eval_names], width,
               label=name)
  acc_ax.set_xticks(x, eval_names, fontsize=8)
  acc_ax.set(ylim=(0, 1.15), ylabel='accuracy', title='Zero-shot public evals')
  acc_ax.legend(fontsize=8, loc='upper left')
  loss_ax.bar(list(policies), [p['pretrain_loss'] for p in policies.values()], color='tab:gray')
  loss_ax.set(ylabel='NLL per token (nats)', title='Pretraining-distribution loss')
  loss_ax.tick_params(axis='x', labelsize=8, rotation=30)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


# The metrics of the training stages' metrics.jsonl drawn as training curves, when logged: the
# training losses, the PPO reward and KL, and the validation figures used to select.
CURVE_METRICS = ('sft/loss', 'pretrain/valid_loss', 'pretrain_rm/valid_loss', 'rm/loss',
                 'rm/accuracy', 'objective/scores', 'objective/kl', 'ptx/loss',
                 'valid/win_rate_vs_sft', 'valid/likert')
CURVE_COLUMNS = 4


def _plot_training_curves(report: Mapping, path: str) -> None:
  """One panel per (stage, metric) of `report['training_curves']` against the step."""
  panels = [(stage, metric, points) for stage, metrics in report['training_curves'].items()
            for metric, points in metrics.items()]
  rows = -(-len(panels) // CURVE_COLUMNS)
  fig = Figure(figsize=(3.2 * CURVE_COLUMNS, 2.4 * rows))
  axes = np.asarray(fig.subplots(rows, CURVE_COLUMNS, squeeze=False)).ravel()
  for ax, (stage, metric, points) in zip(axes, panels):
    steps, values = zip(*points)
    ax.plot(steps, values, marker='.' if len(points) < 20 else None)
    ax.set_title(f'{stage}: {metric}', fontsize=9)
    ax.tick_params(labelsize=7)
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


PLOTS = {'win_rate.png': _plot_win_rate, 'metadata.png': _plot_metadata,
         'alignment_tax.png': _plot_alignment_tax, 'training_curves.png': _plot_training_curves}


def plot_names(report: Mapping) -> list[str]:
  """The PLOTS `report` has data for: the training curves only when it holds some."""
  return [name for name in PLOTS if name != 'training_curves.png' or report.get('training_curves')]


def write_plots(report: Mapping, out_dir: str) -> list[str]:
  """The plots of `report` (win rate with CI bars, metadata rates, alignment tax, training
  curves) in out_dir; their paths."""
  paths = [os.path.join(out_dir, name) for name in plot_names(report)]
  for path in paths:
    PLOTS[os.path.basename(path)](report, path)
  return paths
