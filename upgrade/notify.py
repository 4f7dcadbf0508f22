"""systemd's sd_notify protocol, spoken directly on the socket.

The wire format is documented and tiny: one datagram of newline-separated
``KEY=VALUE`` lines sent to the AF_UNIX datagram socket named by
$NOTIFY_SOCKET (a filesystem path, or an abstract name written with a
leading ``@``). Speaking it ourselves avoids a libsystemd dependency.

Every function returns whether the message was sent and never raises:
systemd missing, gone or busy must never take a serving master down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"

# Long enough for a loaded systemd to pick the datagram up, short enough that
# a master loop stuck on a full socket queue keeps serving signals.
SEND_TIMEOUT = 1.0


def _address(value: str) -> str | None:
    """Translate $NOTIFY_SOCKET into something socket.sendto accepts.

    A leading '@' stands for the NUL byte of Linux's abstract namespace,
    which cannot be written in an environment variable. Other schemes
    (vsock:...) are not ours to speak; we report them as "not sent".
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _one_line(text: str) -> str:
    """Keep a value from starting a new KEY=VALUE line of its own."""
    return " ".join(text.splitlines())


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send KEY=VALUE lines as one datagram; False if there is nobody to tell.

    NOTIFY_SOCKET is deliberately left in the environment: the new master
    re-exec'd during an upgrade must be able to announce itself as well.
    """
    env = os.environ if environ is None else environ
    address = _address(env.get(ENV_NOTIFY_SOCKET, ""))
    if address is None or not lines:
        return False
    try:
        payload = "\n".join(_one_line(line) for line in lines).encode("utf-8", "replace")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(payload, address)
    except (OSError, ValueError):
        return False
    return True


def notify_ready(
    main_pid: int | None = None,
    status: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Say we serve. With main_pid, also move systemd's idea of the main process.

    During an upgrade the new master is a child of the old one; MAINPID tells
    systemd to follow it (the unit needs NotifyAccess=all for a non-main
    process to be heard).
    """
    lines = []
    if main_pid is not None:
        lines.append(f"MAINPID={int(main_pid)}")
    lines.append("READY=1")
    if status is not None:
        lines.append(f"STATUS={status}")
    return notify(*lines, environ=environ)


def notify_reloading(*, environ: Mapping[str, str] | None = None) -> bool:
    """Say a reload started; Type=notify-reload requires the monotonic timestamp."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", environ=environ)


def notify_stopping(*, environ: Mapping[str, str] | None = None) -> bool:
    """Say we are shutting down, so systemd does not mistake it for a crash."""
    return notify("STOPPING=1", environ=environ)


def notify_status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Show one line of text in `systemctl status`."""
    return notify(f"STATUS={text}", environ=environ)
