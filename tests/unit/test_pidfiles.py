"""Unit tests for pidfiles/: real files, real processes, no mocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pidfiles
from pidfiles import AlreadyRunning, Pidfile, PidfileError, procs

SLEEP = "import time; time.sleep(30)"


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until true; fail the test when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.01)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start sleeping Python children with a chosen argv; all are reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*extra: str, argv0: str | None = None) -> subprocess.Popen[bytes]:
        args = [argv0 or sys.executable, "-c", SLEEP, *extra]
        proc = subprocess.Popen(args, executable=sys.executable)
        started.append(proc)
        # cmdline is only final once the exec has happened
        wait_until(lambda: "time.sleep" in (procs.cmdline(proc.pid) or ""))
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def titled() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start Python children that set their process title (as a master does); reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(title: str) -> subprocess.Popen[bytes]:
        code = f"import setproctitle; setproctitle.setproctitle({title!r}); {SLEEP}"
        proc = subprocess.Popen([sys.executable, "-c", code])
        started.append(proc)
        wait_until(lambda: procs.title(proc.pid) == title)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def dead_pid() -> int:
    """A pid that existed a moment ago and has been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited but is not reaped yet; reaped at teardown."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        wait_until(lambda: _state(pid) == "Z")
        yield pid
    finally:
        os.waitpid(pid, 0)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except FileNotFoundError:
        return None
    return None


def tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def assert_one_line(err: BaseException) -> None:
    text = str(err)
    assert text and "\n" not in text


# --------------------------------------------------------------------- procs


def test_is_alive_tracks_a_child_until_it_is_reaped(spawn) -> None:
    proc = spawn()
    assert procs.is_alive(os.getpid())
    assert procs.is_alive(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    assert not procs.is_alive(proc.pid)


@pytest.mark.parametrize("pid", [0, -1, -os.getpid(), 2**40])
def test_is_alive_rejects_group_and_impossible_pids(pid: int) -> None:
    assert procs.is_alive(pid) is False


def test_zombie_is_not_alive_nor_a_child_nor_a_master(zombie: int) -> None:
    assert _state(zombie) == "Z"  # really unreaped while we look
    os.kill(zombie, 0)  # a zombie still answers kill(0), which is the trap
    assert not procs.is_alive(zombie)
    assert zombie not in procs.children(os.getpid())
    assert not procs.is_hotswap_master(zombie)
    assert procs.rss_bytes(zombie) is None
    assert _state(zombie) == "Z"


def test_cmdline_joins_arguments_and_is_none_when_gone(spawn, dead_pid: int) -> None:
    proc = spawn("marker-arg", argv0="sleeper")
    assert procs.cmdline(proc.pid) == f"sleeper -c {SLEEP} marker-arg"
    assert procs.cmdline(dead_pid) is None


def test_is_hotswap_master_recognises_masters_not_workers(spawn, titled, dead_pid: int) -> None:
    master = titled("hotswap: master")
    named = titled("hotswap: master [app:app]")
    worker = titled("hotswap: worker [app:app]")
    mentions = spawn("hotswap-test")  # "hotswap" in its command line
    argv0 = spawn(argv0="hotswap: master")  # the title as argv[0], but more arguments follow
    other = spawn(argv0="sleeper")
    assert procs.is_hotswap_master(master.pid)
    assert procs.is_hotswap_master(named.pid)
    assert not procs.is_hotswap_master(worker.pid)
    assert procs.is_hotswap_worker(worker.pid) and not procs.is_hotswap_worker(master.pid)
    assert not procs.is_hotswap_master(mentions.pid)
    assert not procs.is_hotswap_master(argv0.pid)
    assert not procs.is_hotswap_master(other.pid)
    assert not procs.is_hotswap_master(dead_pid)


def test_parent_pid(spawn, dead_pid: int) -> None:
    proc = spawn()
    assert procs.parent_pid(proc.pid) == os.getpid()
    assert procs.parent_pid(os.getpid()) == os.getppid()
    assert procs.parent_pid(dead_pid) is None


def test_children_sees_a_started_child_and_forgets_it_when_gone(spawn) -> None:
    first = spawn()
    second = spawn()
    kids = procs.children(os.getpid())
    assert first.pid in kids and second.pid in kids
    assert kids == sorted(kids)
    assert os.getpid() not in kids
    first.kill()
    first.wait(timeout=10)
    kids = procs.children(os.getpid())
    assert first.pid not in kids and second.pid in kids


def test_start_time_of_a_fresh_child_is_now(spawn, dead_pid: int) -> None:
    proc = spawn()
    started = procs.start_time(proc.pid)
    assert started is not None
    assert abs(started - time.time()) < 5
    own = procs.start_time(os.getpid())
    assert own is not None and own <= started + 1
    assert procs.start_time(dead_pid) is None


def test_start_time_survives_a_command_name_with_parentheses_and_spaces(spawn) -> None:
    # comm is field 2 of /proc/pid/stat; a naive split at the first ')' or at
    # spaces shifts every later field.
    comm = "x) 1 2 3) R 9"
    code = f"open('/proc/self/comm', 'w').write({comm!r}); {SLEEP}"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == comm)
        started = procs.start_time(proc.pid)
        assert started is not None
        assert abs(started - time.time()) < 5
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_open_fd_count_counts_new_descriptors(dead_pid: int) -> None:
    before = procs.open_fd_count(os.getpid())
    assert before is not None and before >= 3
    r, w = os.pipe()
    try:
        assert procs.open_fd_count(os.getpid()) == before + 2
    finally:
        os.close(r)
        os.close(w)
    assert procs.open_fd_count(dead_pid) is None


def test_rss_bytes_is_plausible(spawn, dead_pid: int) -> None:
    own = procs.rss_bytes(os.getpid())
    assert own is not None and 1024 * 1024 < own < 64 * 1024**3
    pid = spawn().pid
    # Right after exec the interpreter is still mapping itself in: let it grow.
    wait_until(lambda: (procs.rss_bytes(pid) or 0) > 1024 * 1024)
    assert procs.rss_bytes(dead_pid) is None


# ------------------------------------------------------------------ identity


def _written_before(path: Path, pid: int, seconds: float = 60.0) -> None:
    """Make ``path`` name ``pid`` with an mtime ``seconds`` ago (a pidfile from before)."""
    path.write_text(f"{pid}\n")
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_titled_master_that_wrote_the_file_is_a_master(tmp_path: Path, titled) -> None:
    master = titled("hotswap: master [app:app]")
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(master.pid)  # after it started, as a real master does
    found = pf.identify()
    assert found.verdict == pidfiles.MASTER and found.is_master and found.pid == master.pid
    assert found.message == f"{pf.path} names master {master.pid}"
    written = os.stat(pf.path).st_mtime
    assert procs.is_hotswap_master(master.pid, written)


def test_a_master_title_set_by_a_process_younger_than_the_file_is_a_reused_pid(
    tmp_path: Path, titled
) -> None:
    impostor = titled("hotswap: master")
    pf = Pidfile(tmp_path / "x.pid")
    _written_before(Path(pf.path), impostor.pid)
    written = os.stat(pf.path).st_mtime
    assert procs.is_hotswap_master(impostor.pid)  # the title alone would fool us
    assert not procs.is_hotswap_master(impostor.pid, written)
    found = pf.identify()
    assert found.verdict == pidfiles.REUSED and not found.is_master
    assert "started after the file was written" in found.message
    # and it neither blocks a start nor survives a rollback's restore
    assert pf.claim(os.getpid()) is not None
    assert pf.read() == os.getpid()
    _written_before(Path(pf.path), impostor.pid)
    assert pf.restore(os.getpid(), None) is True
    assert impostor.poll() is None


def test_a_sleep_with_hotswap_in_its_argv_is_a_stranger(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["hotswap", "30"], executable="sleep")
    other = subprocess.Popen(["hotswap: master", "30"], executable="sleep")
    try:
        wait_until(lambda: procs.cmdline(sleeper.pid) == "hotswap 30")
        wait_until(lambda: procs.cmdline(other.pid) == "hotswap: master 30")
        for proc in (sleeper, other):
            pf = Pidfile(tmp_path / f"{proc.pid}.pid")
            _written_before(Path(pf.path), proc.pid, seconds=-60)  # even written "later"
            found = pf.identify()
            assert found.verdict == pidfiles.STRANGER, found
            assert found.message == (f"{pf.path} names {proc.pid}, which is not a hotswap "
                                     f"master (cmdline: {procs.cmdline(proc.pid)})")
            assert not procs.is_hotswap_master(proc.pid)
    finally:
        for proc in (sleeper, other):
            proc.kill()
            proc.wait(timeout=10)


def test_identify_missing_dead_and_unreadable_never_raise(tmp_path: Path, dead_pid: int) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.identify().verdict == pidfiles.MISSING
    assert pf.identify().message == f"{pf.path} does not exist"
    pf.write(dead_pid)
    assert pf.identify().verdict == pidfiles.DEAD
    assert pf.identify().message == f"{pf.path} names {dead_pid}, which is not running"
    for content, why in ((b"", "it is empty"), (b"12\x0034", "holds no pid: '12?34'"),
                         (b"garbage", "holds no pid: 'garbage'")):
        Path(pf.path).write_bytes(content)
        found = pf.identify()
        assert (found.verdict, found.pid) == (pidfiles.UNREADABLE, None)
        assert found.message == f"{pf.path} is unreadable: {why}"
    os.unlink(pf.path)
    os.mkdir(pf.path)
    found = pf.identify()
    assert found.verdict == pidfiles.UNREADABLE and "not a regular file" in found.message


def test_oldbin_naming_the_current_master_is_same_not_old(tmp_path: Path, titled,
                                                          dead_pid: int) -> None:
    master = titled("hotswap: master")
    other = titled("hotswap: master")
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(master.pid)
    pf.write_oldbin(master.pid)
    current = pf.identify()
    found = pf.identify_oldbin(current)
    assert found.verdict == pidfiles.SAME and not found.is_master
    assert found.message == f"{pf.oldbin_path} names {master.pid}, the master {pf.path} names too"
    pf.write_oldbin(other.pid)
    assert pf.identify_oldbin(current).verdict == pidfiles.MASTER
    pf.write_oldbin(dead_pid)
    assert pf.identify_oldbin(current).verdict == pidfiles.DEAD


def test_a_new_master_is_recognised_by_parent_and_environment(spawn) -> None:
    env = {**os.environ, "HOTSWAP_PARENT_PID": str(os.getpid())}
    new = subprocess.Popen([sys.executable, "-c", SLEEP], env=env)
    wrong = subprocess.Popen([sys.executable, "-c", SLEEP],
                             env={**os.environ, "HOTSWAP_PARENT_PID": str(os.getppid())})
    try:
        plain = spawn()
        wait_until(lambda: "time.sleep" in (procs.cmdline(new.pid) or ""))
        wait_until(lambda: "time.sleep" in (procs.cmdline(wrong.pid) or ""))
        assert procs.is_new_master_of(new.pid, os.getpid())
        assert not procs.is_new_master_of(wrong.pid, os.getpid())
        assert not procs.is_new_master_of(plain.pid, os.getpid())
        assert not procs.is_new_master_of(new.pid, os.getppid())
        assert procs.new_masters_of(os.getpid()) == [new.pid]
    finally:
        for proc in (new, wrong):
            proc.kill()
            proc.wait(timeout=10)


# ------------------------------------------------------------ Pidfile basics


def test_path_is_absolute_and_survives_chdir(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    pf = Pidfile("x.pid")
    assert pf.path == str(tmp_path / "x.pid")
    assert pf.oldbin_path == str(tmp_path / "x.pid.oldbin")
    assert pf.failed_path == str(tmp_path / "x.pid.upgrade-failed")
    monkeypatch.chdir(tmp_path / "elsewhere")
    pf.write(4321)
    assert (tmp_path / "x.pid").read_text() == "4321\n"
    assert not (tmp_path / "elsewhere" / "x.pid").exists()


def test_accepts_pathlike(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.path == str(tmp_path / "x.pid")


def test_read_missing_is_none(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.read() is None
    assert pf.read_oldbin() is None
    assert Pidfile(tmp_path / "no" / "x.pid").read() is None


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"   ", b"abc", b"12abc", b"-5", b"0", b"+7", b"1 2", b"0x10",
     b"9" * 30, b"\xff\xfe12", b"1\x002", "\u0661\u0662".encode()],
)
def test_read_garbage_is_none_and_never_raises(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.pid").write_bytes(content)
    (tmp_path / "x.pid.oldbin").write_bytes(content)
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.read() is None
    assert pf.read_oldbin() is None


@pytest.mark.parametrize("content", [b"123", b"123\n", b"  123 \n", b"0123\n"])
def test_read_accepts_a_pid_with_whitespace(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.pid").write_bytes(content)
    assert Pidfile(tmp_path / "x.pid").read() == 123


def test_read_of_a_directory_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "x.pid").mkdir()
    with pytest.raises(PidfileError) as info:
        Pidfile(tmp_path / "x.pid").read()
    assert_one_line(info.value)
    assert str(tmp_path / "x.pid") in str(info.value)


def test_write_and_write_oldbin(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(100)
    pf.write_oldbin(200)
    assert pf.read() == 100 and pf.read_oldbin() == 200
    pf.write(101)
    assert (tmp_path / "x.pid").read_text() == "101\n"
    assert (tmp_path / "x.pid.oldbin").read_text() == "200\n"
    assert tmp_files(tmp_path) == []


def test_write_into_missing_folder_names_the_folder(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "no" / "dir" / "x.pid")
    folder = tmp_path / "no" / "dir"
    with pytest.raises(PidfileError) as info:
        pf.write(1)
    assert str(info.value) == f"cannot write pidfile {pf.path}: folder {folder} does not exist"
    with pytest.raises(PidfileError) as info:
        pf.write_oldbin(1)
    assert f"folder {folder} does not exist" in str(info.value)


def test_failed_replace_removes_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "x.pid").mkdir()  # os.replace(file, directory) fails
    pf = Pidfile(tmp_path / "x.pid")
    with pytest.raises(PidfileError) as info:
        pf.write(1)
    assert_one_line(info.value)
    assert str(info.value).startswith(f"cannot write pidfile {pf.path}: ")
    assert tmp_files(tmp_path) == []
    assert (tmp_path / "x.pid").is_dir()


@pytest.mark.timeout(60)
def test_readers_never_see_a_missing_or_torn_pidfile(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    values = (1234567, 89)
    pf.write(values[0])
    seen: list[int | None] = []
    bad: list[int | None] = []
    stop = threading.Event()

    def reader() -> None:
        reader_pf = Pidfile(pf.path)
        for _ in range(1_000_000):  # bounded; normally ended by stop
            if stop.is_set():
                return
            got = reader_pf.read()
            seen.append(got)
            if got not in values:
                bad.append(got)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(2000):
            pf.write(values[i % 2])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert bad == []
    assert len(seen) > 0
    assert tmp_files(tmp_path) == []


# --------------------------------------------------------------------- claim


def test_claim_creates_a_missing_pidfile(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.claim(os.getpid()) is None
    assert (tmp_path / "x.pid").read_text() == f"{os.getpid()}\n"
    assert tmp_files(tmp_path) == []


def test_claim_of_a_pidfile_already_naming_us(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(os.getpid())
    assert pf.claim(os.getpid()) is None
    assert pf.read() == os.getpid()
    assert tmp_files(tmp_path) == []


def test_claim_refuses_when_a_live_hotswap_master_holds_it(tmp_path: Path, titled) -> None:
    master = titled("hotswap: master")
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(master.pid)
    with pytest.raises(AlreadyRunning) as info:
        pf.claim(os.getpid())
    assert info.value.pid == master.pid
    assert str(info.value) == f"already running as pid {master.pid} (pidfile {pf.path})"
    assert isinstance(info.value, PidfileError)
    assert pf.read() == master.pid
    assert tmp_files(tmp_path) == []


def test_claim_replaces_a_pidfile_naming_a_live_non_hotswap_process(
    tmp_path: Path, spawn
) -> None:
    stranger = spawn(argv0="sleeper")
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(stranger.pid)
    warning = pf.claim(os.getpid())
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"removed stale pidfile {pf.path} naming pid {stranger.pid}")
    assert pf.read() == os.getpid()
    assert stranger.poll() is None  # nobody was signalled
    assert tmp_files(tmp_path) == []


def test_claim_replaces_a_pidfile_naming_a_dead_pid(tmp_path: Path, dead_pid: int) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(dead_pid)
    warning = pf.claim(os.getpid())
    assert warning == f"removed stale pidfile {pf.path} naming dead pid {dead_pid}"
    assert pf.read() == os.getpid()


def test_claim_replaces_a_pidfile_naming_a_zombie(tmp_path: Path, zombie: int) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(zombie)
    warning = pf.claim(os.getpid(), is_live_master=lambda pid: procs.is_alive(pid))
    assert warning == f"removed stale pidfile {pf.path} naming dead pid {zombie}"
    assert pf.read() == os.getpid()


@pytest.mark.parametrize("content", ["garbage\nmore", "", "-3"])
def test_claim_replaces_garbage(tmp_path: Path, content: str) -> None:
    (tmp_path / "x.pid").write_text(content)
    pf = Pidfile(tmp_path / "x.pid")
    warning = pf.claim(os.getpid())
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"removed stale pidfile {pf.path}")
    assert pf.read() == os.getpid()
    assert tmp_files(tmp_path) == []


def test_claim_into_missing_folder(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "no" / "dir" / "x.pid")
    with pytest.raises(PidfileError) as info:
        pf.claim(os.getpid())
    folder = tmp_path / "no" / "dir"
    assert str(info.value) == f"cannot write pidfile {pf.path}: folder {folder} does not exist"


def test_claim_of_a_directory_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "x.pid").mkdir()
    with pytest.raises(PidfileError) as info:
        Pidfile(tmp_path / "x.pid").claim(os.getpid())
    assert_one_line(info.value)
    assert tmp_files(tmp_path) == []


@pytest.mark.timeout(60)
def test_two_starters_racing_on_a_missing_pidfile_exactly_one_wins(tmp_path: Path) -> None:
    pids = (111111, 222222)
    both_live = set(pids).__contains__
    pf_path = tmp_path / "x.pid"
    for _ in range(50):
        barrier = threading.Barrier(2, timeout=10)
        outcome: dict[int, object] = {}

        def starter(pid: int, barrier: threading.Barrier = barrier,
                    outcome: dict[int, object] = outcome) -> None:
            pf = Pidfile(pf_path)
            barrier.wait()
            try:
                outcome[pid] = pf.claim(pid, is_live_master=both_live)
            except AlreadyRunning as err:
                outcome[pid] = err

        threads = [threading.Thread(target=starter, args=(p,)) for p in pids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        winners = [p for p in pids if outcome.get(p, "missing") is None]
        losers = [p for p in pids if isinstance(outcome.get(p), AlreadyRunning)]
        assert len(winners) == 1 and len(losers) == 1
        assert outcome[losers[0]].pid == winners[0]  # type: ignore[union-attr]
        assert Pidfile(pf_path).read() == winners[0]
        pf_path.unlink()
    assert tmp_files(tmp_path) == []


# ------------------------------------------------------------------- restore


def test_restore_writes_a_missing_pidfile(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.restore(os.getpid(), 4242) is True
    assert pf.read() == os.getpid()


def test_restore_takes_back_from_the_failed_new_master(tmp_path: Path, titled) -> None:
    # even while the failed master still runs and looks like a master
    failed = titled("hotswap: master")
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(failed.pid)
    assert pf.restore(os.getpid(), failed.pid) is True
    assert pf.read() == os.getpid()


def test_restore_replaces_a_dead_pid_and_garbage(tmp_path: Path, dead_pid: int) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(dead_pid)
    assert pf.restore(os.getpid(), None) is True
    assert pf.read() == os.getpid()
    (tmp_path / "x.pid").write_text("junk")
    assert pf.restore(os.getpid(), None) is True
    assert pf.read() == os.getpid()


def test_restore_leaves_another_live_master_alone(tmp_path: Path, titled) -> None:
    other_master = titled("hotswap: master")
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(other_master.pid)
    assert pf.restore(os.getpid(), 4242) is False
    assert pf.read() == other_master.pid


def test_restore_when_already_ours_writes_nothing(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(os.getpid())
    before = os.stat(pf.path).st_ino
    assert pf.restore(os.getpid(), 4242) is False
    assert os.stat(pf.path).st_ino == before
    assert pf.read() == os.getpid()


# ------------------------------------------------------------------ removing


def test_remove_if_ours(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.remove_if_ours(os.getpid()) is False  # missing
    pf.write(os.getpid())
    assert pf.remove_if_ours(os.getpid()) is True
    assert not (tmp_path / "x.pid").exists()


def test_remove_if_ours_leaves_a_file_naming_someone_else(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(os.getpid() + 1)
    assert pf.remove_if_ours(os.getpid()) is False
    assert pf.read() == os.getpid() + 1
    (tmp_path / "x.pid").write_text("junk")
    assert pf.remove_if_ours(os.getpid()) is False
    assert (tmp_path / "x.pid").read_text() == "junk"


def test_remove_oldbin_if_ours(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.write(os.getpid())
    pf.write_oldbin(os.getpid() + 1)
    assert pf.remove_oldbin_if_ours(os.getpid()) is False
    assert pf.read_oldbin() == os.getpid() + 1
    pf.write_oldbin(os.getpid())
    assert pf.remove_oldbin_if_ours(os.getpid()) is True
    assert not (tmp_path / "x.pid.oldbin").exists()
    assert pf.read() == os.getpid()  # PIDFILE itself untouched


# ----------------------------------------------------------- failure record

_RECORD = re.compile(r"^(\d+) (\d+\.\d{6}) ([^\n]*)\n$")


def test_record_failure_writes_one_parsable_line(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.read_failure() is None
    pf.record_failure(os.getpid(), "new master exited with status 1:\nImportError: no app\r\n")
    raw = pf.read_failure()
    assert raw is not None
    match = _RECORD.match(raw)
    assert match, raw
    assert int(match.group(1)) == os.getpid()
    assert abs(float(match.group(2)) - time.time()) < 5
    assert match.group(3) == "new master exited with status 1: ImportError: no app"
    assert raw == (tmp_path / "x.pid.upgrade-failed").read_text()
    assert tmp_files(tmp_path) == []


def test_record_failure_changes_content_each_time(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.record_failure(7, "same reason")
    first = pf.read_failure()
    wait_until(lambda: f"{time.time():.6f}" != (first or "").split()[1])
    pf.record_failure(7, "same reason")
    assert pf.read_failure() != first


def test_failure_record_is_readable_from_posix_sh(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    pf.record_failure(4321, "timed out\nwaiting for READY")
    out = subprocess.run(
        ["sh", "-c", 'read pid when reason < "$1"; printf "%s|%s" "$pid" "$reason"', "sh",
         pf.failed_path],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    assert out == "4321|timed out waiting for READY"


def test_remove_failure_if_ours(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "x.pid")
    assert pf.remove_failure_if_ours(5) is False  # missing
    pf.record_failure(5, "boom")
    assert pf.remove_failure_if_ours(6) is False
    assert pf.read_failure() is not None
    assert pf.remove_failure_if_ours(5) is True
    assert pf.read_failure() is None
    assert not (tmp_path / "x.pid.upgrade-failed").exists()


def test_record_failure_into_missing_folder(tmp_path: Path) -> None:
    pf = Pidfile(tmp_path / "no" / "x.pid")
    with pytest.raises(PidfileError) as info:
        pf.record_failure(1, "x")
    assert_one_line(info.value)
    assert f"folder {tmp_path / 'no'} does not exist" in str(info.value)
