"""Metric writers: JSONL split and resume truncation, TensorBoard files, progress display."""
import io
import struct
import json
import types

import jax
import jax.numpy as jnp
import pytest

from rlhf_jax import metrics


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_writer_splits_deterministic_and_timing_metrics(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  writer.write(1, {'sft/loss': jnp.float32(2.5), 'perf/tokens_per_sec': 100.0,
                   'time/train': 0.5})
  writer.write(2, {'sft/loss': 2.0})
  writer.close()
  assert read_jsonl(tmp_path / 'metrics.jsonl') == [{'step': 1, 'sft/loss': 2.5},
                                                    {'step': 2, 'sft/loss': 2.0}]
  assert read_jsonl(tmp_path / 'perf.jsonl') == [
      {'step': 1, 'perf/tokens_per_sec': 100.0, 'time/train': 0.5}]
  events = list((tmp_path / 'tensorboard').iterdir())
  assert events and events[0].name.startswith('events.out.tfevents')


def test_resume_drops_lines_after_restored_step(tmp_path):
  writer = metrics.Writer(str(tmp_path))
  for step in range(1, 6):
    writer.write(step, {'rm/loss': float(step)})
  writer.close()
  writer = metrics.Writer(str(tmp_path), resume_step=3)
  writer.write(4, {'rm/loss': 40.0})
  writer.close()
  assert read_jsonl(tmp_path / 'metrics.jsonl') == [
      {'step': 1, 'rm/loss': 1.0}, {'step': 2, 'rm/loss': 2.0}, {'step': 3, 'rm/loss': 3.0},
      {'step': 4, 'rm/loss': 40.0}]


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  writer = metrics.Writer(str(tmp_path / 'stage'))
  writer.write(1, {'sft/loss': 1.0})
  writer.close()
  assert not (tmp_path / 'stage').exists()


def test_non_scalar_metric_named():
  with pytest.raises(ValueError, match="'ppo/val/vpred' has shape"):
    metrics.to_scalars({'ppo/val/vpred': jnp.zeros(3)})


def test_progress_plain_lines_off_a_terminal():
  stream = io.StringIO()
  progress = metrics.Progress(100, stream=stream)
  progress.update(10, loss=1.23456, tokens_per_sec=4096.0)
  progress.update(20, loss=float('nan'))
  # A PPO step shows its reward and KL beside the loss.
  logged = {'ppo/policy/loss': 0.1, 'objective/kl': 2.5, 'objective/scores': -0.25}
  progress.update(30, loss=0.1, values=metrics.console_values(logged))
  progress.close()
  lines = stream.getvalue().splitlines()
  assert lines[0].startswith('step 10/100  loss 1.2346  4,096 tokens/s  ETA ')
  assert lines[1].startswith('step 20/100  loss nan')
  assert lines[2].startswith('step 30/100  loss 0.1000  reward -0.250  KL 2.500  ETA ')


def test_progress_rewrites_one_line_on_a_terminal():
  class Tty(io.StringIO):
    def isatty(self):
      return True
  stream = Tty()
  progress = metrics.Progress(10, stream=stream)
  progress.update(1, loss=1.0)
  progress.update(2, loss=0.5)
  progress.close()
  assert stream.getvalue().count('\r') == 2 and stream.getvalue().endswith('\n')
  assert stream.getvalue().count('\n') == 1


def test_metric_name_helpers():
  assert metrics.is_timing('perf/mfu') and metrics.is_timing('time/generate')
  assert not metrics.is_timing('objective/kl')
  assert metrics.peak_flops() is None  # fake CPU devices


@pytest.mark.parametrize('kind, peak', [('TPU v5', 459e12), ('TPU v5 lite', 197e12),
                                        ('TPU v4', 275e12), ('NVIDIA H100 80GB HBM3', 989e12)])
def test_peak_flops_by_reported_device_kind(kind, peak):
  # The strings real devices report: v5p says 'TPU v5', v5e 'TPU v5 lite'.
  assert metrics.peak_flops(types.SimpleNamespace(device_kind=kind)) == peak


def _events(folder):
  """Every TensorBoard event in the event files of `folder` (records: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2
  events = []
  for path in sorted(folder.glob('events.out.tfevents*')):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
      i += 12 + n + 4
  return events


def test_hparams_record_the_config_against_the_final_metrics(tmp_path):
  config = {'kl_coef': 0.05, 'model': {'geometry': 'tiny'}, 'then': ('eval',)}
  summary = {'rm/test_heldout_accuracy': 0.61, 'steps': 31, 'seconds': 9.5, 'stage': 'rm',
             'model': {}}
  metrics.write_hparams(str(tmp_path), config, summary)
  events = _events(tmp_path / 'tensorboard' / 'hparams')
  plugin = b''.join(v.metadata.plugin_data.content for e in events for v in e.summary.value
                    if v.metadata.plugin_data.plugin_name == 'hparams')
  assert b'kl_coef' in plugin and b'model.geometry' in plugin and b'tiny' in plugin
  assert b'rm/test_heldout_accuracy' in plugin and b'seconds' not in plugin
  scalars = {v.tag: v.simple_value for e in events for v in e.summary.value
             if v.HasField('simple_value')}
  assert scalars == pytest.approx({'rm/test_heldout_accuracy': 0.61, 'steps': 31})
