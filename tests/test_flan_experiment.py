"""experiments/instructgpt_mini/flan.py at the tiny size: the FLAN analog is fine-tuned on the
world's instruction mixture and evaluated beside the workdir's policies, which stay untouched."""
import json
import subprocess
import sys

from stage_fixtures import REPO, WORLD_SCALE, copy_workdir


def test_flan_analog_is_trained_on_the_mixture_and_evaluated_with_the_policies(tiny_workdir,
                                                                              tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'w', ['data', 'pretrain', 'sft'])
  result = subprocess.run(
      [sys.executable, 'experiments/instructgpt_mini/flan.py', f'--workdir={workdir}',
       f'--set=config.data.world_scale={WORLD_SCALE}', '--set=config.total_steps=2'],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  mixture = tmp_path / 'w_flan' / 'mixture' / 'demonstrations_train.jsonl'
  sft_demos = (workdir / 'data' / 'demonstrations_sft_train.jsonl').read_text().splitlines()
  assert len(mixture.read_text().splitlines()) == len(sft_demos)
  provenance = json.loads((tmp_path / 'w_flan' / 'sft' / 'provenance.json').read_text())
  assert provenance['config']['data']['demonstrations'] == str(mixture.resolve())
  report = json.loads((tmp_path / 'w_flan_eval' / 'eval' / 'report.json').read_text())
  assert {'gpt', 'sft', 'flan'} <= set(report['policies'])
  rows = [line.split(' | ')[0] for line in result.stdout.splitlines() if line.startswith('| ')]
  assert '| flan' in rows and '| sft' in rows
  assert not (workdir / 'eval').exists()  # the workdir's own stages are only read
