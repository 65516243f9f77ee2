"""The review page's data: what every policy wrote for each eval prompt, and how it was judged.

Reads a workdir's eval stage (read-only): eval/responses.jsonl (per test prompt: the prompt
record and every policy's response), eval/report.json and the report's PNG plots. The per-prompt
judgments (outcome against SFT, Likert, Table 3 flags) are not stored by the eval stage; they are
re-derived here with the same functions and inputs it used (`evaluation.assign_labelers` with
the report's seed over the data card's held-out pool, `evaluation.judge_responses`), so they are
exactly the judgments behind the report. A report without a seed (written before it recorded
one) or a workdir without the world's data card is shown without judgments.
"""
import json
import pathlib
from typing import Any

from rlhf_jax import evaluation
from rlhf_jax.label_ui import server
from rlhf_jax.world import build


def judgments(prompts: list[str], responses: dict[str, list[str]], card: dict,
              seed: int) -> dict[str, list[dict]]:
  """Per policy, per prompt: {'outcome': 1 / 0.5 / 0 against SFT, 'likert', 'flags'}."""
  pool = build.labeler_pool(card['seed'], 'heldout', card['labelers']['heldout'])
  judges = evaluation.assign_labelers(pool, len(prompts), seed)
  out = {}
  for name, texts in responses.items():
    judged = evaluation.judge_responses(judges, prompts, texts, responses[evaluation.BASELINE])
    out[name] = [{'outcome': o, 'likert': lk, 'flags': m, 'judge': j.name}
                 for o, lk, m, j in zip(judged['outcomes'], judged['likerts'], judged['metadata'],
                                        judges)]
  return out


def load(workdir: str | pathlib.Path) -> dict:
  """The review page's whole content for a workdir with a complete eval stage.

  Returns:
    {'report': report.json, 'policies': [names], 'judged': bool, 'plots': [file names],
     'prompts': [{'prompt', 'category', 'customer', 'responses': {policy: text},
                  'judgments': {policy: {...}} or None}]}
  """
  eval_dir = pathlib.Path(workdir) / 'eval'
  report = json.loads((eval_dir / 'report.json').read_text())
  rows = [json.loads(line) for line in
          (eval_dir / 'responses.jsonl').read_text(encoding='utf-8').splitlines() if line.strip()]
  policies = list(report['policies'])
  card_path = pathlib.Path(workdir) / 'data' / 'card.json'
  judged = None
  if 'seed' in report and card_path.exists() and evaluation.BASELINE in policies:
    responses = {name: [r['responses'][name] for r in rows] for name in policies}
    judged = judgments([r['prompt'] for r in rows], responses,
                       json.loads(card_path.read_text()), report['seed'])
  prompts = [{'prompt': r['prompt'], 'category': r.get('category'), 'customer': r.get('customer'),
              'responses': r['responses'],
              'judgments': judged and {name: judged[name][i] for name in policies}}
             for i, r in enumerate(rows)]
  plots = [name for name in evaluation.PLOTS if (eval_dir / name).exists()]
  return {'report': report, 'policies': policies, 'baseline': evaluation.BASELINE,
          'judged': judged is not None, 'plots': plots, 'prompts': prompts}


class ReviewApp:
  """Serves one workdir's eval read-only: GET /api/review and GET /api/plots/NAME."""
  static = server.static_table(['review.js', 'style.css'], 'review.html')

  def __init__(self, workdir: str | pathlib.Path):
    self.content = load(workdir)  # read once: the page shows one snapshot of the eval
    eval_dir = pathlib.Path(workdir) / 'eval'
    self.plots = {f'/api/plots/{name}': eval_dir / name for name in self.content['plots']}

  def get(self, path: str, query: dict[str, list[str]]) -> Any:
    """Answers GET /api/review and the plots (behind the token like all data)."""
    del query  # the page filters on its side
    if path == '/api/review':
      return self.content
    if path in self.plots:
      return server.Raw('image/png', self.plots[path].read_bytes())
    raise server.HTTPError(404, f'no route {path}')

  def post(self, path: str, body: Any) -> Any:
    """Nothing is written through the review server."""
    del body
    raise server.HTTPError(405, f'{path}: the review page is read-only')
