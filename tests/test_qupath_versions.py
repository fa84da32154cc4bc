"""The QuPath tests again against every other QuPath under test, each in a process of its own (one JVM per process,
each QuPath on the Java it bundles): this process runs them against the first (tests/qupath_kit.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from qupath_kit import QUPATH_MODULES, REPO, kits, qupath_home, version_of

OTHERS = [k for k in kits() if qupath_home() is None or k.resolve() != qupath_home().resolve()]


@pytest.mark.skipif(not OTHERS, reason="one QuPath or none under test: this process runs the QuPath tests on it")
@pytest.mark.parametrize("home", OTHERS, ids=[f"qupath-{version_of(k)}" for k in OTHERS])
def test_qupath_tests_pass_on(home):
    env = {**os.environ, "QUPATH_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *QUPATH_MODULES],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, f"QuPath {version_of(home)}:\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and " failed" not in summary, summary
