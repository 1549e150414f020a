"""Running a command where file permissions hold, whoever runs the tests."""

from __future__ import annotations

import os
import shutil

import pytest


def without_permissions_bypass() -> list[str]:
    """A command prefix under which file permissions hold for the command: none for a user, and
    for root the capabilities that bypass them dropped (setpriv, util-linux)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot hold here")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
