"""scripts/hotswap-upgrade.sh must stay plain POSIX sh that runs on minimal hosts.

Deploy tools run it where only a POSIX shell and a few tools (kill, sleep, sed, awk,
stat) can be counted on, so a bash-ism or a stray `rm`/`date`/`ps` would only show up on
the one host that lacks it. These checks catch that before the script ships.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hotswap-upgrade.sh"
FORBIDDEN = ("rm", "date", "ps", "pgrep", "pkill", "killall", "bash", "grep", "tr", "perl", "python",
             "python3", "find", "ls", "cut", "head", "tail", "od")


@pytest.mark.timeout(30)
def test_script_parses_with_sh_n() -> None:
    result = subprocess.run(["sh", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(60)
def test_script_passes_shellcheck_as_posix_sh() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail(
            "shellcheck is not installed; install it (apt-get install -y shellcheck) "
            "so the POSIX-sh check of scripts/hotswap-upgrade.sh can run"
        )
    result = subprocess.run(
        [shellcheck, "-s", "sh", str(SCRIPT)], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_is_executable_and_starts_with_sh() -> None:
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    assert os.access(SCRIPT, os.X_OK)


def test_script_uses_no_command_beyond_the_few_allowed() -> None:
    # A comment starts at a "#" after blank or line start; "$#" and "${0##*/}" are code.
    code = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in SCRIPT.read_text().splitlines())
    used = {
        word
        for word in FORBIDDEN
        if re.search(rf"(^|[\s;|&(`]){re.escape(word)}(\s|$|;|\))", code, re.MULTILINE)
    }
    assert used == set(), f"commands not allowed in the upgrade script: {sorted(used)}"
