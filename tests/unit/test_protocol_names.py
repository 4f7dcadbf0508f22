"""The shell script's copies of the protocol's names match upgrade/names.py.

scripts/hotswap-upgrade.sh cannot import Python, so it repeats the suffixes, titles and
state names it uses. A rename on one side only would make the script wait for a state
that never comes, or read a file nobody writes, and only a real upgrade would tell.
"""

from __future__ import annotations

import re
from pathlib import Path

from upgrade import names

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "hotswap-upgrade.sh"
PROTOCOL_PREFIXES = ("SUFFIX_", "STATE_", "TITLE_", "ENV_")


def script_constants() -> dict[str, str]:
    """``NAME='value'`` assignments at the top level of the script."""
    found = {}
    for line in SCRIPT.read_text().splitlines():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)='([^']*)'", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_every_protocol_name_in_the_script_equals_the_one_in_names() -> None:
    copies = {k: v for k, v in script_constants().items() if k.startswith(PROTOCOL_PREFIXES)}
    assert copies, "the script defines no protocol names: the parser of this test is broken"
    for key, value in copies.items():
        assert hasattr(names, key), f"the script's {key} is not in upgrade/names.py"
        assert getattr(names, key) == value, f"{key}: script {value!r} != names {getattr(names, key)!r}"


def test_the_script_knows_every_final_state_and_the_files_it_reads() -> None:
    copies = script_constants()
    assert set(names.FINAL_STATES) <= set(copies.values())
    for used in ("SUFFIX_STATE", "SUFFIX_OLDBIN", "TITLE_MASTER"):
        assert used in copies, f"the script should take {used} from its copies"


def test_no_protocol_literal_outside_the_copies() -> None:
    """A literal state or suffix elsewhere in the script would escape the check above."""
    code = SCRIPT.read_text()
    copies = {v for k, v in script_constants().items() if k.startswith(PROTOCOL_PREFIXES)}
    for value in copies:
        assert code.count(f"'{value}'") == 1, f"{value!r} is spelled out more than once"
    for state in names.FINAL_STATES:
        assert not re.search(rf"^\s*['\"]?{re.escape(state)}['\"]?\)", code, re.MULTILINE), \
            f"a case label spells out {state!r}"


def test_the_script_parses_the_state_keys_in_the_order_names_gives() -> None:
    match = re.search(r"for _key in ([a-z ]+); do", SCRIPT.read_text())
    assert match, "parse_state's key loop not found"
    assert (*match.group(1).split(), "reason") == names.STATE_KEYS


def test_every_protocol_name_is_spelled_out_in_one_python_file_only() -> None:
    """The packages import the names: each literal is written once, where it is defined."""
    sources = [path for pkg in ("hotswap", "upgrade", "pidfiles", "listeners")
               for path in sorted((REPO / pkg).rglob("*.py"))]
    texts = {path: path.read_text() for path in sources}
    for name in names.__all__:
        if not name.startswith(("ENV_", "TITLE_", "SUFFIX_")):
            continue  # READY, "ready"...: plain words other channels and phases use too
        value = getattr(names, name)
        spelled = [path.relative_to(REPO) for path, text in texts.items() if f'"{value}"' in text]
        assert len(spelled) == 1, f"{name}={value!r} is spelled out in {spelled}"
