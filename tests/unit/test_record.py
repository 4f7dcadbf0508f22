"""The upgrade record: the state line a shell can parse, and the history a person reads."""

from __future__ import annotations

import json
from pathlib import Path

from upgrade import names, record
from upgrade.record import UpgradeRecord


def test_state_line_round_trips_with_spaces_in_the_reason() -> None:
    rec = UpgradeRecord(id="41.1700000000000", old=41, state=names.STATE_ROLLED_BACK, new=52,
                        generation=3, ready=0.1234, drain=0.5, handover=0.62, commit=None,
                        reason="new workers keep crashing (2 in the\nwatch window)")
    line = rec.state_line()
    assert line.endswith("\n") and line.count("\n") == 1, "one line, whatever the reason"
    assert line.startswith("id=41.1700000000000 state=rolled-back old=41 new=52 generation=3 "
                           "ready=0.123 drain=0.500 handover=0.620 commit=- reason=new workers")
    back = record.parse_state_line(line)
    assert back is not None
    assert (back.id, back.state, back.old, back.new, back.generation) == (
        rec.id, rec.state, 41, 52, 3)
    assert back.commit is None and back.ready == 0.123
    assert back.reason == "new workers keep crashing (2 in the watch window)"


def test_malformed_state_lines_are_not_records() -> None:
    for text in ("", "garbage", "id=1 state=ready", "state=ready id=1 old=2 new=- generation=- "
                 "ready=- drain=- handover=- commit=- reason=", "id=1 state=x old=notapid new=- "
                 "generation=- ready=- drain=- handover=- commit=- reason="):
        assert record.parse_state_line(text) is None, text


def test_history_appends_and_reads_the_newest(tmp_path: Path) -> None:
    pidfile = str(tmp_path / "app.pid")
    for n in range(12):
        rec = UpgradeRecord.begin(100 + n)
        rec.state = names.STATE_COMMITTED if n % 2 else names.STATE_FAILED
        record.append_history(pidfile, rec)
    entries = record.read_history(pidfile, last=10)
    assert [e["old_pid"] for e in entries] == list(range(102, 112))
    assert entries[-1]["result"] == "upgraded" and entries[-2]["result"] == "failed"
    lines = Path(record.history_path(pidfile)).read_text().splitlines()
    assert all(json.loads(line)["id"] for line in lines)


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    pidfile = str(tmp_path / "app.pid")
    rec = UpgradeRecord.begin(7)
    record.write_state(pidfile, rec)
    rec.state = names.STATE_WATCHING
    record.write_state(pidfile, rec)
    assert record.read_state(pidfile).state == names.STATE_WATCHING
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.pid.upgrade"]
