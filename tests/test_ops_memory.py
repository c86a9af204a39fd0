"""The heap after start-up (agent.ops.memory), each check in a fresh interpreter: arenas and
freed pages are per process, and the test runner's own would hide what the calls do."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="arenas and malloc_trim are glibc's"
)

# Eight threads allocate outside Python's small-object allocator (bytes over 512 B go to malloc);
# glibc gives each a heap of its own, a 64 MiB-aligned mapping, up to its arena limit.
ARENAS = """
import sys, threading
from agent.ops.memory import limit_arenas
if sys.argv[1] == "limit":
    limit_arenas()
go = threading.Event()
def work():
    kept = [bytes(3000) for _ in range(200)]
    go.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
heaps = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    start = int(fields[0].split("-")[0], 16)
    if len(fields) == 5 and fields[1] == "rw-p" and start % (64 << 20) == 0:
        heaps += 1
go.set()
print(heaps)
"""

# Start-up's garbage: 40,000 buffers of 1.5 KB freed, one in fifty kept, so the heap cannot
# shrink from its top and only malloc_trim gives the pages in between back.
SETTLE = """
import gc, sys
from agent.ops.memory import settle_memory
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
kept, garbage = [], []
for i in range(40000):
    (kept if i % 50 == 0 else garbage).append(bytearray(1500))
del garbage
before = rss_mb()
if sys.argv[1] == "settle":
    settle_memory()
else:
    gc.collect()
print(before, rss_mb(), gc.get_freeze_count())
"""


def _run(code: str, arg: str, **env: str) -> list[float]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code, arg],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [float(x) for x in out.split()]


def test_limit_arenas_caps_the_threads_heaps() -> None:
    [free] = _run(ARENAS, "free")
    [limited] = _run(ARENAS, "limit")
    assert free >= 4, "eight allocating threads should have had heaps of their own"
    assert limited <= 1  # ARENAS = 2: the main arena and one shared by every thread


def test_an_explicit_malloc_arena_max_wins() -> None:
    [limited] = _run(ARENAS, "limit", MALLOC_ARENA_MAX="4")
    assert 2 <= limited <= 3  # the environment's four, not the agent's two


def test_settle_memory_gives_start_ups_garbage_back() -> None:
    before, after, frozen = _run(SETTLE, "collect")
    assert after > before * 0.9, "without a trim the freed pages stay (else the check is void)"
    assert frozen == 0
    before, after, frozen = _run(SETTLE, "settle")
    assert after < before * 0.5
    assert frozen > 1000  # what lives on is out of the collector's full passes
