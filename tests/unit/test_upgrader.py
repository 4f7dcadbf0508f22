"""The public face of upgrade/ (`Upgrader`, `Flag`, `report_startup_failure`), with real
processes, sockets and signals.

Most tests make this test process the old generation: it builds an Upgrader whose command
line starts `gen.py` (written below) from a temporary folder, so the new generation is a
real process that inherits the sockets and speaks the readiness protocol, and a child of
ours that we reap. What the new generation does is chosen by the MODE variable.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from upgrade.flag import Flag


@pytest.mark.timeout(20)
def test_main_thread_wait_runs_a_signal_delivered_to_another_thread() -> None:
    """`up.exit.wait()` in the main thread must not keep a signal handler from running when
    the kernel gave the signal to another thread (it did, now and then, and USR2 was lost)."""
    assert threading.current_thread() is threading.main_thread()
    flag, handled = Flag(), Flag()
    previous = signal.signal(signal.SIGUSR2, lambda *_: (handled.set(), flag.set()))
    try:
        def send() -> None:
            time.sleep(0.3)  # the main thread is in flag.wait() by then
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)

        sender = threading.Thread(target=send)
        sender.start()
        assert flag.wait(timeout=5), "the handler did not run while the main thread waited"
        assert handled.is_set()
        sender.join(5)
    finally:
        signal.signal(signal.SIGUSR2, previous)
