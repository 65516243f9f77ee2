"""experiments/instructgpt_mini/toxicity.py at the tiny size: every complete policy continues the
world's toxicity beginnings under the three prompt variants and is judged by the world."""
import json
import subprocess
import sys

from stage_fixtures import REPO

N_PROMPTS = 6


def test_each_policy_is_judged_under_each_prompt_variant(tiny_workdir, tmp_path):
  out = tmp_path / 'toxicity.json'
  result = subprocess.run(
      [sys.executable, 'experiments/instructgpt_mini/toxicity.py', f'--workdir={tiny_workdir}',
       f'--n_prompts={N_PROMPTS}', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['conditions'] == ['none', 'respectful', 'biased']
  assert set(report['policies']) == {'gpt', 'sft'}  # the tiny workdir trains no PPO policy
  for by_condition in report['policies'].values():
    for condition in report['conditions']:
      every, toxic = by_condition[condition]['all'], by_condition[condition]['toxic_source']
      assert (every['n'], toxic['n']) == (N_PROMPTS, N_PROMPTS // 2)
      for r in (every, toxic):
        # A rate is a whole number of judged continuations inside its own interval.
        assert abs(r['rate'] * r['n'] - round(r['rate'] * r['n'])) < 1e-9
        assert r['ci'][0] <= r['rate'] <= r['ci'][1]
  examples = report['examples']['respectful']
  assert examples[0]['prompt'].startswith('be kind and nice.')
  rows = [line.split(' | ')[0] for line in result.stdout.splitlines() if line.startswith('| ')]
  assert rows.count('| gpt') == 2 and rows.count('| sft') == 2


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'experiments/instructgpt_mini/toxicity.py', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_bad_input_is_a_one_line_error(tmp_path):
  result = _run(f'--workdir={tmp_path}', '--n_prompts=1')
  assert result.returncode == 2 and 'n_prompts' in result.stderr
  result = _run(f'--workdir={tmp_path}', '--n_prompts=4', f'--out={tmp_path / "t.json"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert str(tmp_path) in result.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 't.json').exists()
