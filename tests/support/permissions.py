"""Running a command where file permissions hold, whoever runs the tests."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.worker_process import run_qa_worker


def without_permissions_bypass() -> list[str]:
    """A command prefix under which file permissions hold for the command: none for a user, and
    for root the capabilities that bypass them dropped (setpriv, util-linux)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot hold here")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def refusal_where_permissions_hold(*args: str, timeout: float) -> str:
    """The one line `python -m worker ARGS`, run where file permissions hold, writes to stderr as
    it exits with 2, the code of a refused command line or setting."""
    done = run_qa_worker(*args, prefix=without_permissions_bypass(), timeout=timeout)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    return line
