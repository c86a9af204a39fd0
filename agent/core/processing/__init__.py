"""Edge processing: report by exception, windows, waveform features, machine state, counters,
alarms and predictions (time to threshold), applied by the pipeline to each device's batches
before they are buffered.

``Processing`` is built once from the config (``agent.app.runtime``) and holds one
``DeviceProcessor`` per device that has any processing key; other devices' batches pass through
untouched. It owns the worker thread the numpy maths runs on and the state files under
``<data_dir>/processing/`` (run time per state, counter totals, alarm and anomaly state, the
points predictions are fitted on), saved at most every ``persist_every`` seconds and at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent.core.processing.config import ProcessedDevice, WaveformSpec
from agent.core.processing.device import DeviceProcessor, Output, needs_processing
from agent.core.processing.persist import StateFiles
from agent.core.processing.values import FeatureValue
from drivers.base import Batch, DeviceBase

__all__ = ["DeviceProcessor", "Output", "Processing"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

#: Where the retained machine-state message goes: ``(device, payload)``.
StateSink = Callable[[str, bytes], None]


class Processing:
    def __init__(
        self,
        devices: Sequence[DeviceBase],
        data_dir: Path,
        state_sink: StateSink | None = None,
        *,
        persist_every: float = 30.0,
        workers: int | None = None,
    ) -> None:
        self._files = StateFiles(data_dir)
        self._devices = _processed(devices)
        self._sink = state_sink
        self._persist_every = persist_every
        # numpy releases the GIL in FFTs: spare cores analyse several devices' waveforms at once,
        # one core is left to the event loop.
        self._workers = workers or max(1, min(4, (os.cpu_count() or 1) - 1))
        self.processors: dict[str, DeviceProcessor] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._saver: asyncio.Task[None] | None = None
        self._retired: dict[str, dict[str, Any]] = {}  # removed by a reload, not saved yet

    async def start(self) -> None:
        """Restore saved state and start the worker thread and the periodic save."""
        for d in self._devices:
            saved = await asyncio.to_thread(self._files.load, d.name)
            self.processors[d.name] = DeviceProcessor(d, saved)
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="processing")
        self._saver = asyncio.create_task(self._save_periodically(), name="processing-save")

    def devices_changed(self, devices: Sequence[DeviceBase]) -> None:
        """A config reload: processors of changed devices are rebuilt with the state they had
        (run time, counter totals, alarms), removed devices are saved and dropped, new ones
        start from their saved state, if any."""
        wanted = {d.name: d for d in _processed(devices)}
        for name in [n for n in self.processors if n not in wanted]:
            self._retired[name] = self.processors.pop(name).snapshot()
        for name, device in wanted.items():
            old = self.processors.get(name)
            if old is not None and old.device == device:
                continue
            saved = old.snapshot() if old is not None else self._retired.pop(name, None)
            if saved is None:
                saved = self._files.load(name)  # one small file, at reload time only
            self.processors[name] = DeviceProcessor(device, saved, resume=old is not None)
        self._devices = list(wanted.values())

    async def stop(self) -> None:
        """Save every device's state; call after the pollers stopped."""
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        await self.save(force=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def save(self, force: bool = False) -> None:
        for name, doc in list(self._retired.items()):
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._files.save, name, doc)
                self._retired.pop(name, None)
        for p in list(self.processors.values()):
            if p.dirty or force:
                p.dirty = False
                try:
                    await asyncio.to_thread(self._files.save, p.name, p.snapshot())
                except OSError as exc:
                    p.dirty = True
                    log.warning(
                        "processing state not saved", extra={"device": p.name, "error": str(exc)}
                    )

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._persist_every)
            await self.save()

    async def process(self, batch: Batch) -> Output | None:
        """What ``batch`` becomes; None when its device has no processing."""
        processor = self.processors.get(batch.device)
        if processor is None:
            return None
        out = await processor.process(batch, self._compute, self._fit)
        if out.state is not None and self._sink is not None:
            self._sink(batch.device, _dumps(out.state).encode())
        return out

    async def _compute(
        self, samples: Any, spec: WaveformSpec, rpm: float | None
    ) -> dict[str, FeatureValue]:
        # Imported here, not at the top: numpy costs ~13 MB of RSS, and most gateways analyse
        # no waveform at all.
        from agent.core.processing import features

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, features.compute, samples, spec, rpm)

    async def _fit(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking call (a prediction's fit, a model's inference) on the worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)


def _processed(devices: Sequence[DeviceBase]) -> list[ProcessedDevice]:
    """The devices with any processing key set (every device the config loader builds has the
    keys; one made by hand for a test or a tool may not)."""
    return [d for d in devices if isinstance(d, ProcessedDevice) and needs_processing(d)]
