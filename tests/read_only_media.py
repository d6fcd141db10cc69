"""Real read-only media for tests, for root too (CI runs as root, and root ignores file permissions):
each folder is bind-mounted read-only onto itself in a private mount namespace (unshare), and the
command under test runs inside it as a child process. The mounts live and die with the child;
nothing outside it sees them, so a failed test leaves no mount behind."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

# mounts each of the first $1 arguments read-only onto itself, checks it refuses a write, then runs the rest
_MOUNT_THEN_RUN = """
n=$1; shift
while [ "$n" -gt 0 ]; do
    mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97
    if touch "$1/.searchlite-write-probe" 2>/dev/null; then echo "$1 is still writable" >&2; exit 98; fi
    shift; n=$((n - 1))
done
exec "$@"
"""


@functools.cache
def _unshare() -> list[str]:
    """The unshare command that gives a private mount namespace here (root: a plain one; others:
    inside a user namespace), or a skip naming why there is none."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("read-only media need util-linux's unshare and mount")
    command = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        command.insert(1, "--map-root-user")
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run([*command, "sh", "-c", _MOUNT_THEN_RUN, "sh", "1", folder, "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a read-only folder in a private mount namespace here: {probe.stderr.strip()}")
    return command


def run_read_only(folders: Sequence[Path], argv: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """Run argv (text mode, output captured) with each of folders read-only: a real read-only
    file system as far as the child can tell (EROFS on a write, whoever it runs as)."""
    argv = [*_unshare(), "sh", "-c", _MOUNT_THEN_RUN, "sh", str(len(folders)), *map(str, folders), *argv]
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode not in (97, 98), f"the read-only mount failed: {result.stderr}"
    return result
