"""Faults a careful user runs into (issue 16): each test reproduces one and checks the fix.

The loop tests train test_loop's toy regression on 8 fake CPU devices; the stage tests work on
private copies of the shared tiny workdir (stage_fixtures).
"""
import json

from test_loop import read_lines, toy_run


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
