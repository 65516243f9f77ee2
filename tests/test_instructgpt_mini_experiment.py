"""experiments/instructgpt_mini/run.py at the tiny size, from the shared tiny workdir: the main
job's missing stages, then with --large_policy the 8x base, SFT and PPO-ptx scored by the main
job's reward model, all evaluated in the main workdir. The "8x" geometry is a small one here
(`--large_model`): the test is of the pipeline, not of the size, and it is the suite's longest."""
import json
import subprocess
import sys

from stage_fixtures import REPO, config_file, copy_workdir, small_ppo_config

# Stage configs of the toy run: the shipped ones at the tests' world scale, a few steps each.
# Every stage the pipeline may make is listed: a dependency's config is read from this folder.
TRAINING = 'c.total_steps, c.log_every, c.eval_every = 3, 1, 0'
SETTINGS = {'world': (), 'label': (), 'pretrain': (TRAINING,), 'sft': (TRAINING,),
            'pretrain_rm': (TRAINING,), 'sft_rm': (TRAINING,), 'rm': (TRAINING,),
            'sft_init': (TRAINING,),
            'sample': ('c.max_prompts, c.max_valid_prompts = 16, 16',),
            'eval': ('c.batch_size, c.public_eval_items, c.pretrain_eval_batches, '
                     'c.max_test_prompts, c.examples = 16, 4, 1, 16, 1',)}
LARGE_MODEL = 'n_layers=2,d_model=64,n_heads=2,d_ff=256'


def write_configs(folder):
  folder.mkdir()
  for stage, settings in SETTINGS.items():
    (folder / f'{stage}.py').write_text(config_file(stage, *settings))
  # PPO-ptx as the suite's small runs, validating on 8 prompts, and ending with the eval stage
  # as the shipped config does.
  (folder / 'ppo_ptx.py').write_text(
      small_ppo_config('ppo_ptx', 8, "c.then = ('eval',)"))


def test_large_policy_is_trained_with_the_main_jobs_reward_model(tiny_workdir, tmp_path):
  configs = tmp_path / 'configs'
  write_configs(configs)
  workdir = copy_workdir(tiny_workdir, tmp_path / 'mini_seed0')
  result = subprocess.run(
      [sys.executable, 'experiments/instructgpt_mini/run.py', f'--workdir={tmp_path / "mini"}',
       '--seeds=0', '--large_policy', f'--configs={configs}', f'--large_model={LARGE_MODEL}'],
      cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stderr[-3000:]
  large = tmp_path / 'mini_seed0_8x'
  for stage in ('pretrain', 'sft', 'sft_init', 'ppo_ptx'):
    model = json.loads((large / stage / 'summary.json').read_text())['model']
    assert (model['n_layers'], model['d_model']) == (2, 64), stage
  # Scored by the main job's reward model, which the 8x folder neither trains nor links.
  ppo = json.loads((large / 'ppo_ptx' / 'provenance.json').read_text())['config']
  assert ppo['reward_from'] == str((workdir / 'rm').resolve())
  assert not (large / 'rm').exists()
  report = json.loads((workdir / 'eval' / 'report.json').read_text())
  assert {'gpt', 'sft', 'ppo_ptx', 'gpt_8x', 'sft_8x', 'ppo_ptx_8x'} <= set(report['policies'])
  # The 8x folder's own eval: its policies against its own SFT.
  large_report = json.loads((large / 'eval' / 'report.json').read_text())
  assert {'gpt', 'sft', 'ppo_ptx'} <= set(large_report['policies'])
  # The same parameters, prompts, sampling keys and judges: the same answers and scores.
  assert large_report['policies']['sft']['likert'] == report['policies']['sft_8x']['likert']
  rows = [line.split(' | ')[0] for line in result.stdout.splitlines() if line.startswith('| ')]
  assert {'| sft_8x', '| ppo_ptx_8x'} <= set(rows)
  assert '8x pipeline, against its own SFT' in result.stdout
  assert '8x PPO-ptx selection curve' in result.stdout
