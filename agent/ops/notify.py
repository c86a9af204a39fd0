"""systemd's notify protocol (``Type=notify``), spoken directly: a datagram to ``$NOTIFY_SOCKET``.

Why not a library: the protocol is one ``sendto`` of ``KEY=value`` lines on a unix datagram socket
(sd_notify(3)), and the packages that wrap it either need libsystemd's headers to build or are
unmaintained. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the agent runs the
same from a shell, a test or a container.

What the agent says, and when:

* ``READY=1`` once the config is loaded and the buffer opened (``Type=notify`` holds dependent
  units and ``systemctl start`` until then);
* ``WATCHDOG=1`` from the event loop every half of ``$WATCHDOG_USEC``: a loop that hangs stops the
  keep-alives and systemd restarts the service (``WatchdogSec=``);
* ``RELOADING=1`` ... ``READY=1`` around a reload (with ``MONOTONIC_USEC``, which systemd 253+
  wants), ``STOPPING=1`` when a stop begins, and ``STATUS=`` one-line summaries that
  ``systemctl status`` shows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """The service manager's ear, or nothing when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        self._failed_logged = False
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when there is no manager or it failed.

        Never raises: a service manager that went away must not take the agent with it."""
        if self._address is None:
            return False
        data = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait: a manager that does not read (its queue holds ~10 datagrams) must
                # not stall the event loop; a keep-alive that cannot be queued is dropped.
                sock.setblocking(False)
                sock.sendto(data, self._address)
        except OSError as exc:
            if not self._failed_logged:  # once: a watchdog failing every second would flood
                self._failed_logged = True
                log.warning("cannot notify the service manager", extra={"error": str(exc)})
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading config")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    async def watchdog(self) -> None:
        """Keep-alives from the event loop itself until cancelled: only a loop that still runs
        its tasks can send them, which is the point."""
        interval = self.watchdog_interval
        if interval is None or not self.enabled:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` (as sd_watchdog_enabled(3) advises), or None when the watchdog
    is off or meant for another process (``$WATCHDOG_PID``)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
