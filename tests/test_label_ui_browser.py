"""Issue 20 in a real browser: headless Debian Chromium (Selenium driving /usr/bin/chromedriver)
labels three prompts of the tiny workdir's samples with the keyboard only, one of them with ties,
through a crash and restart of the server; the rankings it leaves pass `data check` and train the
reward model for a step. The eval review page is opened on a stand-in eval folder.

Nothing here downloads a browser: the binary and driver paths are given, so Selenium Manager is
never asked, and `.ci/setup_browser.sh` (run by the README's test command) installs both.
"""
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from stage_fixtures import copy_workdir, stage_config

from rlhf_jax import stages
from rlhf_jax.data import __main__ as data_cli
from rlhf_jax.data import records

CHROMIUM, CHROMEDRIVER = '/usr/bin/chromium', '/usr/bin/chromedriver'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(args, log_path):
  """`python -m rlhf_jax.label_ui ARGS`; returns the process once it prints its URL."""
  log = open(log_path, 'a')
  proc = subprocess.Popen([sys.executable, '-m', 'rlhf_jax.label_ui', *args], stdout=log,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 120
  while time.time() < deadline:
    if 'http://' in open(log_path).read().split('[label_ui] ---')[-1]:
      return proc
    assert proc.poll() is None, open(log_path).read()
    time.sleep(0.1)
  raise TimeoutError(open(log_path).read())


@pytest.fixture
def browser():
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  profile = tempfile.mkdtemp(prefix='chromium-profile-')
  for arg in ('--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
              '--disable-background-networking', '--disable-component-update', '--disable-sync',
              '--disable-dev-shm-usage', f'--user-data-dir={profile}', '--window-size=1200,900'):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
  yield driver
  driver.quit()
  shutil.rmtree(profile, ignore_errors=True)


def _keys(driver, *keys):
  ActionChains(driver).send_keys(*keys).perform()


def _wait(driver, condition, timeout=30):
  return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _text(driver, element_id):
  return driver.find_element(By.ID, element_id).text


def _label_current(driver, likerts, flags_keys, positions):
  """Rates, flags and ranks the open prompt with keys only, then submits."""
  cards = driver.find_elements(By.CSS_SELECTOR, '#cards .card')
  assert len(cards) == len(likerts) == len(positions)
  for likert, keys in zip(likerts, flags_keys):
    _keys(driver, *keys, str(likert), 'j')
  _keys(driver, Keys.ENTER)
  _wait(driver, lambda d: 'Step 2' in _text(d, 'step'))
  _keys(driver, 'k' * len(positions))  # back to the first completion
  for p in positions:
    _keys(driver, str(p), 'j')
  _keys(driver, Keys.ENTER)


def _done(driver, n):
  _wait(driver, lambda d: _text(d, 'progress').startswith(f'{n} / '))


def test_keyboard_labeling_with_ties_and_a_restart_trains_the_rm(tiny_workdir, tmp_path,
                                                                  browser):
  # Every stage but the simulated labels, so the rm stage below trains on ours alone.
  workdir = copy_workdir(tiny_workdir, tmp_path / 'wd', [
      f.name for f in tiny_workdir.iterdir() if f.is_dir() and f.name != 'labels'])
  samples = records.read_records(workdir / 'samples' / 'train.jsonl', 'samples')
  port, log = _free_port(), tmp_path / 'server.log'
  args = ['serve', f'--workdir={workdir}', f'--port={port}']
  server = _start(args, log)
  out = workdir / 'human_labels' / 'train'
  expected = []
  try:
    browser.get(f'http://127.0.0.1:{port}/')
    _wait(browser, lambda d: d.find_element(By.ID, 'name').is_displayed())
    _keys(browser, 'ada', Keys.ENTER)
    _wait(browser, lambda d: _text(d, 'prompt') == samples[0]['prompt'])

    # Prompt 1: skipped with `s`, so prompt 2 is shown; it comes back last.
    _keys(browser, 's')
    _wait(browser, lambda d: _text(d, 'prompt') == samples[1]['prompt'])
    k = len(samples[1]['completions'])
    _label_current(browser, [7 - i % 7 for i in range(k)], [['f']] + [[]] * (k - 1),
                   list(range(1, k + 1)))
    expected.append((1, list(range(k))))
    _done(browser, 1)

    # Prompt 3 with ties: the first two share position 1, the rest share position 2.
    assert _text(browser, 'prompt') == samples[2]['prompt']
    k = len(samples[2]['completions'])
    _label_current(browser, [4] * k, [['h', 'c', 'c']] * k, [1, 1] + [2] * (k - 2))
    expected.append((2, [0, 0] + [1] * (k - 2)))
    _done(browser, 2)

    # The server dies (no chance to clean up) and comes back; the page resumes on a reload.
    showing = _text(browser, 'prompt')
    server.send_signal(signal.SIGKILL)
    server.wait()
    with open(log, 'a') as f:
      f.write('[label_ui] ---\n')
    server = _start(args, log)
    browser.refresh()
    _wait(browser, lambda d: _text(d, 'prompt') == showing == samples[3]['prompt'])
    _done(browser, 2)

    # Prompt 4, then undo (`u`) reopens it with its answers; submitted again unchanged.
    k = len(samples[3]['completions'])
    _label_current(browser, [2] * k, [['i']] * k, list(range(k, 0, -1)))
    _done(browser, 3)
    _keys(browser, 'u')
    _wait(browser, lambda d: _text(d, 'prompt') == samples[3]['prompt'])
    _done(browser, 2)
    _keys(browser, Keys.ENTER, Keys.ENTER)
    expected.append((3, list(range(k - 1, -1, -1))))
    _done(browser, 3)
    assert len(records.read_records(out / 'rankings.jsonl', 'rankings')) == 3

    # `b` opens the skipped prompt again.
    _keys(browser, 'b')
    _wait(browser, lambda d: _text(d, 'prompt') == samples[0]['prompt'])
  finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)

  rankings = records.read_records(out / 'rankings.jsonl', 'rankings')
  assert [(r['prompt'], r['ranks'], r['labeler']) for r in rankings] == [
      (samples[i]['prompt'], ranks, 'ada') for i, ranks in expected]
  assert [r['completions'] for r in rankings] == [samples[i]['completions'] for i, _ in expected]
  metadata = [json.loads(line) for line in (out / 'metadata.jsonl').read_text().splitlines()]
  assert metadata[0]['likert'][:2] == [7, 6] and metadata[0]['flags'][0]['fails_instruction']
  assert not metadata[0]['flags'][1]['fails_instruction']
  assert metadata[1]['flags'][0] == {'fails_instruction': False, 'inappropriate': False,
                                     'hallucination': True, 'satisfies_constraint': False}
  assert all(f['inappropriate'] for f in metadata[2]['flags'])
  report = io.StringIO()
  assert data_cli.main(['data', 'check', '--format=rankings', str(out / 'rankings.jsonl')],
                       report, io.StringIO()) == 0
  assert 'records with ties: 1' in report.getvalue()

  config = stage_config('label', workdir)
  config.data.rankings = str(out / 'rankings.jsonl')
  assert stages.run(config)['source'] == 'human'
  # Three rankings leave two for training: a batch of 2, split over a data axis of 2.
  config = stage_config('rm', workdir, total_steps=1, batch_size=2, log_every=1, eval_every=0)
  config.mesh.data, config.mesh.tensor = 2, -1
  summary = stages.run(config)
  assert summary['steps'] == 1 and np.isfinite(summary['train_loss'])


def _stand_in_eval(workdir):
  """An eval folder as the eval stage writes it, over the world's first 12 test prompts, with
  responses written here instead of sampled (the review page only reads them)."""
  from rlhf_jax import evaluation  # pylint: disable=g-import-not-at-top
  from rlhf_jax.stages import world  # pylint: disable=g-import-not-at-top
  test = records.read_records(world.paths(workdir / 'data')['prompts_test'], 'prompts')[:12]
  responses = {'sft': ['I cannot help with that.'] * len(test),
               'ppo_ptx': ['' if i % 2 else r['prompt'] for i, r in enumerate(test)]}
  eval_dir = workdir / 'eval'
  eval_dir.mkdir()
  with open(eval_dir / 'responses.jsonl', 'w') as f:
    for i, r in enumerate(test):
      f.write(json.dumps({**r, 'responses': {n: t[i] for n, t in responses.items()}}) + '\n')
  policies = {n: {'win_rate_vs_sft': 0.5, 'win_rate_ci': [0.2, 0.8], 'likert': 4.0,
                  'fails_instruction_rate': 0.1, 'hallucination_rate': None,
                  'inappropriate_rate': 0.0, 'constraint_satisfied_rate': None,
                  'pretrain_loss': 3.0, 'public_evals': {}} for n in responses}
  report = {'policies': policies, 'baseline': 'sft', 'n_prompts': len(test), 'seed': 0}
  (eval_dir / 'report.json').write_text(json.dumps(report))
  evaluation.write_plots(report, str(eval_dir))
  return test


def test_review_page_filters_by_category_and_by_lost(tiny_workdir, tmp_path, browser):
  from rlhf_jax.label_ui import review  # pylint: disable=g-import-not-at-top
  workdir = copy_workdir(tiny_workdir, tmp_path / 'wd', ('data',))
  test = _stand_in_eval(workdir)
  content = review.load(workdir)
  assert content['judged'] and len(content['prompts']) == len(test)
  assert all(p['judgments']['sft']['outcome'] == 0.5 for p in content['prompts'])  # vs itself
  lost = sum(p['judgments']['ppo_ptx']['outcome'] == 0 for p in content['prompts'])
  assert 0 < lost < len(test)
  category = test[0]['category']
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*')}
  port, log = _free_port(), tmp_path / 'review.log'
  server = _start(['review', f'--workdir={workdir}', f'--port={port}', '--token=s3cret'], log)
  try:
    browser.get(f'http://127.0.0.1:{port}/#token=s3cret')
    rows = lambda d: d.find_elements(By.CSS_SELECTOR, '#rows tr')  # noqa: E731
    _wait(browser, lambda d: len(rows(d)) == len(test))
    assert [h.text for h in browser.find_elements(By.CSS_SELECTOR, '#head th')] == [
        'prompt', 'sft', 'ppo_ptx']
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '#plots img')) == 3)
    assert all(browser.execute_script('return arguments[0].naturalWidth', img) > 0
               for img in browser.find_elements(By.CSS_SELECTOR, '#plots img'))
    browser.find_element(By.ID, 'lost').click()
    _wait(browser, lambda d: len(rows(d)) == lost)
    browser.find_element(By.ID, 'lost').click()
    browser.find_element(By.CSS_SELECTOR, f'#category option[value="{category}"]').click()
    _wait(browser, lambda d: len(rows(d)) == sum(r['category'] == category for r in test))
    # Without the token the data stays closed, and nothing can be written.
    browser.get(f'http://127.0.0.1:{port}/')
    _wait(browser, lambda d: 'token' in _text(d, 'message'))
  finally:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*')} == before
