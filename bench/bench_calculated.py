"""Calculated tags' cost: CPU time per batch through edge processing with a meter's typical
calculated tags against the same device without them, in the same run.

    .venv/bin/python -m bench.bench_calculated [--batches 20000]

A three-phase meter of 24 tags read each poll; the calculated variant adds 8 tags (apparent
power per phase and total, a unit conversion, an imbalance with min/max/abs, a comparison, an
if()). Both run ``Processing.process`` on the same batches (no buffer: the expression's own cost
is what is measured), with a deadband on one tag so processing runs for the baseline too.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.core.processing import Processing
from agent.core.processing.config import ProcessedDevice
from drivers.base import Batch, Reading

TAGS = [f"{q}_{p}" for q in ("voltage", "current", "power", "pf") for p in ("l1", "l2", "l3")] + [
    f"extra_{i}" for i in range(12)
]
CALCULATED = [
    {"name": "kva_l1", "expr": "voltage_l1 * current_l1 / 1000"},
    {"name": "kva_l2", "expr": "voltage_l2 * current_l2 / 1000"},
    {"name": "kva_l3", "expr": "voltage_l3 * current_l3 / 1000"},
    {"name": "kva", "expr": "round(kva_l1 + kva_l2 + kva_l3, 3)"},
    {"name": "power_w", "expr": "(power_l1 + power_l2 + power_l3) * 1000"},
    {
        "name": "imbalance",
        "expr": "(max(current_l1, current_l2, current_l3) - min(current_l1, current_l2, "
        "current_l3)) / max(abs(current_l1), 0.001)",
    },
    {"name": "overloaded", "expr": "current_l1 > 60 or current_l2 > 60 or current_l3 > 60"},
    {"name": "pf_low", "expr": "if(pf_l1 < 0.9, 1, 0)"},
]


def _device(calculated: bool) -> ProcessedDevice:
    tags: list[dict[str, Any]] = [{"name": t} for t in TAGS]
    tags[-1]["deadband"] = 0.5
    doc: dict[str, Any] = {"name": "meter", "driver": "bench", "tags": tags}
    if calculated:
        doc["calculated"] = CALCULATED
    return ProcessedDevice.model_validate(doc)


async def _run(calculated: bool, batches: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        processing = Processing([_device(calculated)], Path(tmp))
        await processing.start()
        try:
            t0 = time.process_time()
            for i in range(batches):
                ts = 1_700_000_000.0 + i
                readings = [Reading(t, 230.0 + (i + k) % 7, ts) for k, t in enumerate(TAGS)]
                await processing.process(Batch("meter", ts, readings))
            return time.process_time() - t0
        finally:
            await processing.stop()


async def main(batches: int) -> None:
    base = await _run(False, batches)
    calc = await _run(True, batches)
    print(f"{batches} batches of {len(TAGS)} tags through processing, CPU time per batch:")
    print(f"  without calculated tags   {base / batches * 1e6:8.1f} us")
    print(f"  with {len(CALCULATED)} calculated tags  {calc / batches * 1e6:8.1f} us")
    extra = (calc - base) / batches / len(CALCULATED) * 1e6
    print(f"  ratio {calc / base:.2f}; about {extra:.1f} us per calculated tag and batch")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20000)
    asyncio.run(main(parser.parse_args().batches))
