"""experiments/overoptimisation/rm_sizes.py at the tiny size: an RM per trunk on half the
rankings, PPO against each, and the Gao et al. fits of every run (one fraction: every run costs a
reward model and a PPO run in subprocesses, and the fraction only scales the data)."""
import json
import pathlib
import subprocess
import sys

from stage_fixtures import REPO, WORLD_SCALE, copy_workdir, small_ppo_config, stage_config

from rlhf_jax import stages


def test_each_trunk_gets_an_rm_a_ppo_run_and_fits(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'w')
  stages.run(stage_config('sft_init', workdir, total_steps=2, eval_every=0))
  configs = tmp_path / 'configs'
  configs.mkdir()
  (configs / 'ppo.py').write_text(small_ppo_config('ppo', valid_prompts=8))
  result = subprocess.run(
      [sys.executable, 'experiments/overoptimisation/rm_sizes.py', f'--workdir={workdir}',
       '--trunks=policy=sft,base=pretrain_rm', '--fractions=0.5', '--best_of_n=4',
       f'--ppo_config={configs / "ppo.py"}', f'--set=config.data.world_scale={WORLD_SCALE}'],
      cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert result.returncode == 0, result.stderr[-3000:]
  out = tmp_path / 'w_rm_sizes'
  # The base model got its SFT first, at its own geometry; the SFT trunk was used as it is.
  assert json.loads((out / 'sft_base' / 'sft_rm' / 'summary.json').read_text())['model'][
      'd_model'] == json.loads((workdir / 'pretrain_rm' / 'summary.json').read_text())['model'][
      'd_model']
  assert not (out / 'sft_policy').exists()
  fits = json.loads((out / 'fits.json').read_text())
  assert len(fits['runs']) == 2
  for name, ppo in fits['runs'].items():
    ppo = pathlib.Path(ppo)
    rm_dir = json.loads((ppo / 'provenance.json').read_text())['config']['reward_from']
    assert rm_dir == str(ppo.parent / 'rm') and ppo.parent.name.startswith(name.split(' ')[0])
    forms = {(r['form'], r['reward']) for r in fits['fits'] if r['run'] == name}
    assert {('bon', 'gold'), ('bon', 'proxy')} <= forms, name
    # The RL points come from the validation curve; four toy iterations barely move the policy
    # (a sampled KL at or below 0), so whether they can be fitted is left to the real run.
    assert len(json.loads((ppo / 'summary.json').read_text())['selection_curve']) == 3
  assert (out / 'overoptimisation.png').stat().st_size > 0
  assert not (workdir / 'rm').exists()  # the workdir's own stages are only read
  # overoptimisation/run.py gives the same best-of-n fits from the PPO folders alone.
  name, ppo = next(iter(fits['runs'].items()))
  single = subprocess.run(
      [sys.executable, 'experiments/overoptimisation/run.py', f'--runs=one={ppo}',
       f'--out={tmp_path}'], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]
  for r in fits['fits']:
    if r['run'] == name and r['form'] == 'bon':
      assert f'| one | bon | {r["reward"]} | {r["alpha"]:.4f} | {r["beta"]:.4f} |' in single.stdout
  assert (tmp_path / 'overoptimisation.png').stat().st_size > 0
