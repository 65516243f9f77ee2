"""Faults a careful user runs into (issue 16): each test reproduces one and checks the fix.

The loop tests train test_loop's toy regression on 8 fake CPU devices; the stage tests work on
private copies of the shared tiny workdir (conftest). Run as a script
(`python tests/test_faults.py WORKDIR TOTAL STALL`) this is the subprocess of the signal test.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from stage_fixtures import cli_args, copy_workdir, run_cli, stage_config
from test_loop import BATCH, DIM, FINGERPRINT, read_lines, toy_init, toy_run

from rlhf_jax import checkpoint, loop, stages
from rlhf_jax.data import pipeline, records, tokenizers
from rlhf_jax.stages import world

LONG_PROMPT = ' '.join(['word'] * 400)  # longer than any prompt_len of the tiny configs


def _wait_for(condition, seconds: float = 120) -> None:
  deadline = time.time() + seconds
  while not condition():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.1)


# Item 1: records dropped by the prompt-length filter.

def test_dataset_with_every_prompt_too_long_is_a_one_line_error(tiny_world):
  tok = tokenizers.load_tokenizer(world.paths(tiny_world / 'data')['tokenizer'])
  sources = {
      'demonstrations': [{'prompt': LONG_PROMPT, 'completion': 'x'}] * 8,
      'rankings': [{'prompt': LONG_PROMPT, 'completions': ['a', 'b'], 'ranks': [0, 1]}] * 8,
      'prompts': [{'prompt': LONG_PROMPT, 'customer': 'c', 'category': 'qa'}] * 8}
  for kind, source in sources.items():
    with pytest.raises(records.RecordError,
                       match=r'^prompt: 0 of 8 .* left \(8 prompt longer than '):
      pipeline.make_dataset(kind, source, tok, batch_size=4, seq_len=64)
  # Fewer left than one batch: a training stream would repeat the few survivors in every batch.
  some = sources['prompts'][:5] + [{'prompt': 'hi', 'customer': 'c', 'category': 'qa'}] * 3
  with pytest.raises(records.RecordError, match='3 of 8 prompts records left.*batch needs 4'):
    pipeline.make_dataset('prompts', some, tok, batch_size=4, seq_len=64)
  assert next(iter(pipeline.make_dataset('prompts', some, tok, batch_size=2, seq_len=64)))
  # A source small from the start (nothing dropped) repeats as before.
  assert next(iter(pipeline.make_dataset('prompts', some[5:], tok, batch_size=4, seq_len=64)))


def test_stage_reports_dropped_records_and_stops_when_none_are_left(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'w', ['data', 'pretrain', 'sft'])
  demos = records.read_records(world.paths(workdir / 'data')['sft_train'], 'demonstrations')
  long = {'prompt': LONG_PROMPT, 'completion': 'x'}
  none_left, some_left = tmp_path / 'none_left.jsonl', tmp_path / 'some_left.jsonl'
  records.write_records(none_left, 'demonstrations', [long] * 40)
  records.write_records(some_left, 'demonstrations', demos + [long] * 5)
  steps = ('--config.total_steps=1', '--config.log_every=1', '--config.eval_every=0',
           '--config.select_by=last', '--force')
  # Today this streams nothing forever: the timeout fails it.
  failed = run_cli(*cli_args('sft', workdir, f'--config.data.demonstrations={none_left}', *steps),
                   timeout=300)
  assert failed.returncode == 1 and 'Traceback' not in failed.stderr
  assert failed.stderr.strip().splitlines()[-1].startswith(
      f'error: {none_left}: prompt: 0 of 40 demonstrations records left (40 prompt longer than')
  ok = run_cli(*cli_args('sft', workdir, f'--config.data.demonstrations={some_left}', *steps),
               timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert f'[data] {some_left}: dropped 5 of {len(demos) + 5} demonstrations records' in ok.stdout
  summary = json.loads((workdir / 'sft' / 'summary.json').read_text())
  (report,) = summary['data_dropped']
  assert report['source'] == str(some_left) and report['kept'] == len(demos)
  assert sum(report['dropped'].values()) == 5
  assert not (workdir / '.sft.replaced').exists()  # the forced run replaced the old output


def _stalling_dataset(stall_batch: int | None) -> grain.IterDataset:
  """Regression examples in order; with `stall_batch`, reading that batch never finishes (a
  starved input pipeline). Read on the main thread, as a filter that drops everything reads."""
  w = np.arange(1, DIM + 1, dtype=np.float32)

  def example(i):
    while stall_batch is not None and i // BATCH >= stall_batch:
      time.sleep(0.05)
    x = np.random.default_rng(i).normal(size=DIM).astype(np.float32)
    return {'x': x, 'y': x @ w, 'tokens': np.zeros(3, np.int32)}
  options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return grain.MapDataset.range(10**6).map(example).to_iter_dataset(options).batch(BATCH)


def _stalling_main(workdir, total, stall):
  sys.modules['torch'] = None  # tensorboardX would import it (seconds)
  result = toy_run(workdir, int(total), log_every=1,
                   data=_stalling_dataset(3 if stall == '1' else None))
  sys.exit(128 + result.stopped_by if result.stopped_by else 0)


@pytest.mark.slow
def test_sigterm_while_waiting_for_data_stops_with_a_checkpoint(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8')

  def launch(workdir, stall):
    return subprocess.Popen([sys.executable, __file__, str(workdir), '6', stall], env=env,
                            stderr=subprocess.PIPE, text=True)
  full, stalled = launch(tmp_path / 'full', '0'), launch(tmp_path / 'stalled', '1')
  try:
    metrics = tmp_path / 'stalled' / 'metrics.jsonl'
    _wait_for(lambda: metrics.exists() and len(read_lines(metrics)) == 3)
    time.sleep(1)  # inside the read of batch 3
    stalled.send_signal(signal.SIGTERM)
    _, err = stalled.communicate(timeout=60)  # today the signal is swallowed: this times out
    assert stalled.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert 'SIGTERM: saved step 3' in err
  finally:
    stalled.kill()
  resumed = launch(tmp_path / 'stalled', '0')
  for process in (full, resumed):
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
  assert read_lines(tmp_path / 'full' / 'metrics.jsonl') == read_lines(metrics)


# Item 2: the world stage and files it did not write.

def test_world_stage_never_deletes_files_it_did_not_write(tmp_path):
  data = tmp_path / 'data'
  (data / 'mine').mkdir(parents=True)
  (data / 'mine.jsonl').write_text('{"text": "my own"}\n')
  (data / 'mine' / 'notes.txt').write_text('notes')
  config = stage_config('world', tmp_path)
  stages.run(config)
  card = world.paths(data)['card']
  # An interrupted attempt: no summary, a half-written file; then a forced rebuild.
  (data / 'summary.json').unlink()
  card.write_text('{')
  stages.run(config)
  assert json.loads(card.read_text())
  stages.run(config, force=True)
  assert (data / 'mine.jsonl').read_text() == '{"text": "my own"}\n'
  assert (data / 'mine' / 'notes.txt').read_text() == 'notes'
  # A user's file under one of the world's names is not the world's to replace.
  other = tmp_path / 'other' / 'data'
  other.mkdir(parents=True)
  (other / 'pretrain.jsonl').write_text('{"text": "mine"}\n')
  with pytest.raises(stages.WorkdirError, match='pretrain.jsonl: the world stage writes'):
    stages.run(stage_config('world', tmp_path / 'other'))
  assert (other / 'pretrain.jsonl').read_text() == '{"text": "mine"}\n'


# Item 3: two runs on one stage folder.

_HOLD = '''
import pathlib, sys, time
from rlhf_jax import stages
with stages._stage_lock(pathlib.Path(sys.argv[1])):
  print('locked', flush=True)
  time.sleep(600)
'''


def test_second_run_on_a_busy_stage_names_the_first(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'w', ['data', 'pretrain'])
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir / 'sft')],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'locked\n'
    config = stage_config('sft', workdir, total_steps=1, log_every=1, eval_every=0)
    with pytest.raises(stages.WorkdirError, match=rf'sft: in use by pid {holder.pid} on '):
      stages.run(config)
    assert not (workdir / 'sft').exists()
  finally:
    holder.kill()
    holder.wait()


# Item 6: --force and inputs that fail.

def test_forced_run_with_bad_inputs_keeps_the_complete_stage(tiny_workdir, tmp_path):
  workdir = copy_workdir(tiny_workdir, tmp_path / 'w', ['data', 'pretrain', 'sft'])
  before = {p.relative_to(workdir): p.read_bytes()
            for p in sorted((workdir / 'sft').rglob('*')) if p.is_file()}
  config = stage_config('sft', workdir, total_steps=1, log_every=1, eval_every=0)
  config.data.demonstrations = str(tmp_path / 'missing.jsonl')
  with pytest.raises(stages.STAGE_ERRORS, match='missing.jsonl'):
    stages.run(config, force=True)
  after = {p.relative_to(workdir): p.read_bytes()
           for p in sorted((workdir / 'sft').rglob('*')) if p.is_file()}
  assert after == before and not (workdir / '.sft.replaced').exists()


# Item 4: corrupt checkpoints.

def _truncate(path: pathlib.Path) -> None:
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.slow
def test_corrupt_checkpoints_fall_back_or_stop_in_one_line(tmp_path):
  full = toy_run(tmp_path / 'full', 8, checkpoint_every=2)
  toy_run(tmp_path / 'run', 6, checkpoint_every=2)  # keeps checkpoints 2, 4, 6
  ckpts = tmp_path / 'run' / 'checkpoints'
  # The newest holds another step's arrays (a mixed-up copy): it reads fine, the weights are
  # wrong, and today it is resumed from silently. The one before has its metadata cut short.
  shutil.rmtree(ckpts / '6' / 'state')
  shutil.copytree(ckpts / '4' / 'state', ckpts / '6' / 'state')
  _truncate(ckpts / '4' / 'meta' / 'metadata')
  resumed = toy_run(tmp_path / 'run', 8, checkpoint_every=2)
  assert read_lines(tmp_path / 'full' / 'metrics.jsonl') == read_lines(
      tmp_path / 'run' / 'metrics.jsonl')
  np.testing.assert_array_equal(full.state.params['w'], resumed.state.params['w'])
  assert sorted(os.listdir(tmp_path / 'run' / checkpoint.CORRUPT_DIR)) == ['4', '6']
  # Nothing intact: one line naming the step and what to delete.
  for data_file in ckpts.glob('*/state/**/d/*'):
    _truncate(data_file)
  with pytest.raises(checkpoint.CheckpointCorrupt, match=r'checkpoints/4: checkpoint 4 is corrupt '
                     r'\(.*\) and no intact one is left; delete .*checkpoints to start the stage'):
    toy_run(tmp_path / 'run', 10, checkpoint_every=2)


# Item 5: blow-ups and the checkpoints they leave.

def _lr_from_step(normal: float, after: int, bad: float):
  """Adam whose learning rate turns `bad` at update `after` (counting from 0)."""
  return optax.adam(lambda count: jnp.where(count < after, normal, bad))


def _saved_w(stage_dir, step, tx) -> np.ndarray:
  ckpt = checkpoint.Checkpointer(str(stage_dir), FINGERPRINT)
  target = jax.eval_shape(lambda: toy_init(tx))
  state, _ = ckpt.restore(target, step=step)
  ckpt.close()
  return np.asarray(state.params['w'])


@pytest.mark.slow
def test_blown_up_states_are_never_kept_as_last_good(tmp_path):
  # lr 1e30 from update 4: the state after step 4 is finite but huge, and step 5's loss is inf.
  with pytest.raises(loop.NonFiniteLoss, match=r'^step 5: toy/loss is inf, computed from the '
                     r'state after step 4; .*removed checkpoint 4; the last good checkpoint is '
                     r'step 3 in '):
    toy_run(tmp_path / 'huge', 10, log_every=1, checkpoint_every=1,
            tx=_lr_from_step(0.1, 3, 1e30))
  assert np.abs(_saved_w(tmp_path / 'huge', 3, _lr_from_step(0.1, 3, 1e30))).max() < 10
  # A NaN learning rate at update 4: the loss of step 4 is fine, the state after it is not.
  with pytest.raises(loop.NonFiniteLoss, match=r'^step 4: the updated state holds NaN or inf; '
                     r'stopped without saving it; the last good checkpoint is step 3 in '):
    toy_run(tmp_path / 'nan', 10, log_every=1, checkpoint_every=1,
            tx=_lr_from_step(0.1, 3, float('nan')))
  assert checkpoint.Checkpointer(str(tmp_path / 'nan'), FINGERPRINT).all_steps() == [1, 2, 3]
  # No good checkpoint at all: said so, never "step None".
  with pytest.raises(loop.NonFiniteLoss, match='no checkpoint is left in .*a rerun starts over'):
    toy_run(tmp_path / 'none', 10, log_every=1, checkpoint_every=1, tx=_lr_from_step(0.1, 0, 1e30))


@pytest.mark.slow
def test_divergence_guard_stops_a_finite_blow_up(tmp_path):
  tx = lambda: _lr_from_step(0.1, 25, 1e3)  # noqa: E731  loss ~1e7 from step 27, still finite
  plain = toy_run(tmp_path / 'off', 30, log_every=1)
  guarded = toy_run(tmp_path / 'on', 30, log_every=1, divergence=1e3)
  assert read_lines(tmp_path / 'off' / 'metrics.jsonl') == read_lines(
      tmp_path / 'on' / 'metrics.jsonl')  # a generous guard changes nothing on a good run
  assert plain.step == guarded.step == 30
  toy_run(tmp_path / 'unguarded', 30, log_every=1, tx=tx())  # off by default: runs through
  with pytest.raises(loop.NonFiniteLoss, match=r'^step 27: toy/loss is .* times its running '
                     r'mean magnitude .*divergence=10.*computed from the state after step 26'):
    toy_run(tmp_path / 'blown', 30, log_every=1, checkpoint_every=1, tx=tx(), divergence=10)


# Item 9: a signal to one process of several.

def _multihost_main(workdir, port, process_id, total, signal_at):
  """One of two processes training the toy together; process 1 is sent SIGTERM after step
  `signal_at` (0: never)."""
  jax.distributed.initialize(f'localhost:{port}', 2, int(process_id))
  sys.modules['torch'] = None

  def wrap(step_fn):
    def step(state, batch, rng):
      state, metrics = step_fn(state, batch, rng)
      if process_id == '1' and int(state.step) == int(signal_at):
        os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.02)  # steps as long as the notice takes to reach the other process
      return state, metrics
    return step
  result = toy_run(workdir, int(total), log_every=10, wrap=wrap)
  sys.exit(128 + result.stopped_by if result.stopped_by else 0)


@pytest.mark.slow
def test_signal_to_one_process_stops_every_process_at_one_step(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')

  def launch(signal_at):
    with socket.socket() as s:
      s.bind(('localhost', 0))
      port = s.getsockname()[1]
    return [subprocess.Popen([sys.executable, __file__, 'multihost', str(tmp_path), str(port),
                              str(i), '400', signal_at], env=env, stderr=subprocess.PIPE,
                             text=True) for i in range(2)]

  def finish(processes):
    try:
      return [(p.communicate(timeout=240)[1], p.returncode) for p in processes]
    finally:
      for p in processes:
        p.kill()
  # Today process 1 saves alone at step 3 while process 0 steps on: both hang.
  (err0, rc0), (err1, rc1) = finish(launch('3'))
  assert rc0 == rc1 == 128 + signal.SIGTERM, (err0[-2000:], err1[-2000:])
  saved = int(re.search(r'SIGTERM: saved step (\d+)', err0).group(1))
  assert 3 < saved < 400
  assert checkpoint.Checkpointer(str(tmp_path), FINGERPRINT).latest_step() == saved
  for err, rc in finish(launch('0')):
    assert rc == 0, err[-2000:]
  steps = [json.loads(line)['step'] for line in read_lines(tmp_path / 'metrics.jsonl')]
  assert steps == list(range(10, 401, 10))


# Items 7 and 8: resuming.

@pytest.mark.slow
def test_torn_metrics_line_is_dropped_on_resume(tmp_path):
  """Item 7: a kill mid-write leaves half a line; the rerun resumes instead of crashing."""
  toy_run(tmp_path / 'full', 10)
  toy_run(tmp_path / 'torn', 6)  # checkpoints at 5 and 6
  with open(tmp_path / 'torn' / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 8, "toy/lo')
  with open(tmp_path / 'torn' / 'perf.jsonl', 'a') as f:
    f.write('{"step": 8, "perf/tok')
  toy_run(tmp_path / 'torn', 10)
  assert read_lines(tmp_path / 'full' / 'metrics.jsonl') == read_lines(
      tmp_path / 'torn' / 'metrics.jsonl')
  assert all(json.loads(line) for line in read_lines(tmp_path / 'torn' / 'perf.jsonl'))


def test_resume_at_the_final_step_reports_the_final_metrics(tmp_path):
  """Item 8: a run killed after its last checkpoint but before summary.json resumes at the end,
  takes no step, and must still return the metrics its summary is made of."""
  full = toy_run(tmp_path, 7, log_every=3)
  again = toy_run(tmp_path, 7, log_every=3)
  assert again.step == 7 and full.metrics and again.metrics == full.metrics


if __name__ == '__main__':
  if sys.argv[1] == 'multihost':
    _multihost_main(*sys.argv[2:])
  else:
    _stalling_main(*sys.argv[1:])
