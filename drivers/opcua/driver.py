"""The OPC UA driver: a subscription whose publishes become batches, or one Read per poll.

Subscribe mode: the server samples, applies the deadband and sends what changed once per
publishing interval. Each publish is stamped when it arrives and kept until the agent's next
``poll()`` (called every publishing interval), which hands the changes on; one tag changing twice
between two polls gives two batches in order (the agent splits them). Poll mode: all tags in one
Read request per cycle.

A dead session (socket closed, keepalive probe unanswered, a ``Bad`` status change of the
subscription) makes the next ``poll()`` raise ``DeviceError``; the agent then marks every tag bad,
closes, and reconnects with backoff, and ``connect()`` builds session, subscription and monitored
items afresh, looking node ids up again (a restarted server may have renumbered namespaces).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from asyncua import Client, ua
from asyncua.common.subscription import Subscription

from drivers.base import DeviceBase, DeviceError, Driver, Reading
from drivers.opcua.config import OpcuaDevice, OpcuaProfile, OpcuaTag
from drivers.opcua.convert import reading, status_name
from drivers.opcua.nodes import Resolved, resolve_tags
from drivers.opcua.session import close_session, open_session, why

log = logging.getLogger(__name__)

#: Publishes kept between two polls. More means the agent stalled for that many intervals; the
#: oldest go (counted as "overflow") so memory stays bounded whatever the server sends.
MAX_PUBLISHES = 1000

#: Monitored items created (or nodes checked) per request: servers cap the operations of a call.
ITEMS_PER_REQUEST = 1000


class _Publishes(Subscription):  # type: ignore[misc]
    """A subscription that keeps each publish whole (asyncua would start a task per changed
    item), so a publishing cycle stays one unit and 5,000 changes cost one callback."""

    def __init__(self, client: Client, params: ua.CreateSubscriptionParameters, sink: Any) -> None:
        super().__init__(client.uaclient.session, params, handler=object())
        self._sink = sink

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        self._sink(publish_result.NotificationMessage.NotificationData)


class OpcuaDriver(Driver):
    """One OPC UA server (a CNC control, a PLC, a moulding machine)."""

    name = "opcua"
    device_model = OpcuaDevice
    profile_model = OpcuaProfile

    def __init__(self, device: DeviceBase) -> None:
        super().__init__(device)
        if not isinstance(device, OpcuaDevice):
            device = OpcuaDevice.model_validate(device.model_dump())
        self.config: OpcuaDevice = device
        self._tags: list[OpcuaTag] = list(device.tags)
        self._client: Client | None = None
        self._sub: _Publishes | None = None
        self._lost: DeviceError | None = None
        # Subscribe mode: client handle → tag name, and the publishes since the last poll.
        self._handles: dict[int, str] = {}
        self._publishes: collections.deque[tuple[float, list[Any]]] = collections.deque()
        self._last_ts = 0.0
        self._next_handle = 0
        # Poll mode: the node ids read in one request, and their tags.
        self._read_ids: list[ua.NodeId] = []
        self._read_tags: list[str] = []
        # Tags that could not be set up at connect: name → reason; reported once per connect.
        self.problems: dict[str, str] = {}
        self._report_problems = False
        self._logged_problems: dict[str, str] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.read_requests = 0

    @classmethod
    def discover(cls, argv: Sequence[str]) -> int:
        """``edge-agent discover opcua ENDPOINT ...``: browse and print a device entry."""
        from drivers.opcua.discover import discover

        return discover(argv)

    def describe_plan(self) -> dict[str, Any]:
        plan: dict[str, Any] = {"mode": self.config.mode, "tags": len(self._tags)}
        if self.config.mode == "subscribe":
            plan["publishing_interval"] = self.config.publishing_interval
        else:
            plan["requests"] = 1 if self._tags else 0
        return plan

    def error_counts(self) -> Mapping[str, int]:
        return dict(self.errors)

    # -- connection -------------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        conn = self.config.connection
        self._lost = None
        client = await open_session(conn, self._on_lost)
        try:
            resolved = await self._check_readable(client, await resolve_tags(client, self._tags))
            if self.config.mode == "subscribe":
                await self._subscribe(client, resolved)
        except BaseException as exc:
            await close_session(client, conn.timeout)
            if isinstance(exc, asyncio.CancelledError | DeviceError):
                raise
            raise why(exc, conn) from exc
        self._client = client
        self._report_problems = True
        self._log_problems()

    def _log_problems(self) -> None:
        """One line per tag that cannot be collected, at the first connect and whenever its
        reason changes (not at every reconnect)."""
        for name, reason in self.problems.items():
            if self._logged_problems.get(name) == reason:
                continue
            tag = next(t for t in self._tags if t.name == name)
            log.warning(
                "tag not collected: %s (%s): %s",
                name,
                tag.address,
                reason,
                extra={"device": self.config.name, "tag": name, "reason": reason},
            )
        self._logged_problems = dict(self.problems)

    async def _on_lost(self, exc: Exception) -> None:
        """asyncua's watchdog saw the session die; the next poll says so."""
        if self._lost is None:
            self._lost = DeviceError(
                "connection lost", f"{self.config.connection.endpoint}: {exc!r}"
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        self._sub = None
        self._handles = {}
        self._publishes.clear()
        if client is not None:
            await close_session(client, self.config.connection.timeout)

    # -- subscribe mode ---------------------------------------------------------------------------

    async def _subscribe(self, client: Client, resolved: list[Resolved]) -> None:
        interval_ms = self.config.publishing_interval * 1000
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = interval_ms
        # The server sends a keepalive after this many empty intervals (about one keepalive);
        # it ends a subscription nobody asks publishes for after ten times as long.
        keepalive = max(
            1, round(max(self.config.connection.keepalive * 1000, interval_ms) / interval_ms)
        )
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = keepalive * 10
        params.MaxNotificationsPerPublish = 0  # no limit: a cycle's changes arrive together
        params.PublishingEnabled = True
        params.Priority = 0
        sub = _Publishes(client, params, self._on_publish)
        await sub.init()
        requests: list[tuple[str, ua.MonitoredItemCreateRequest]] = []
        for r in resolved:
            if r.node is None:
                continue
            requests.append((r.tag.name, self._item_request(r.tag, r.node)))
        for start in range(0, len(requests), ITEMS_PER_REQUEST):
            chunk = requests[start : start + ITEMS_PER_REQUEST]
            results = await sub.create_monitored_items([mir for _, mir in chunk])
            for (name, mir), result in zip(chunk, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    self.problems[name] = status_name(result)
                else:
                    self._handles[mir.RequestedParameters.ClientHandle] = name
        self._sub = sub

    def _item_request(self, tag: OpcuaTag, node: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        # Only the absolute deadband goes to the server: it means the same there as at the edge.
        # ``deadband_percent`` is the edge's (percent of the last reported value, applied by the
        # processing stage for every driver); OPC UA's own percent deadband is a share of the
        # item's EURange, a different rule that many servers do not implement.
        mfilter = None
        if tag.deadband is not None:
            mfilter = ua.DataChangeFilter()
            mfilter.Trigger = ua.DataChangeTrigger.StatusValue
            mfilter.DeadbandType = ua.DeadbandType.Absolute
            mfilter.DeadbandValue = float(tag.deadband)
        sampling = tag.sampling_interval
        if sampling is None:
            sampling = self.config.publishing_interval
        params = ua.MonitoringParameters()
        self._next_handle += 1
        params.ClientHandle = self._next_handle
        params.SamplingInterval = sampling * 1000
        params.QueueSize = tag.queue_size
        params.DiscardOldest = True
        if mfilter is not None:
            params.Filter = mfilter
        item = ua.ReadValueId()
        item.NodeId = node
        item.AttributeId = ua.AttributeIds.Value
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request

    def _on_publish(self, notifications: list[Any] | None) -> None:
        """One publish: its data changes stamped with the arrival time; a ``Bad`` status change
        (the server ended the subscription) is a lost session."""
        if not notifications:
            return  # a keepalive
        changes: list[Any] = []
        for notif in notifications:
            if isinstance(notif, ua.DataChangeNotification):
                changes.extend(notif.MonitoredItems)
            elif isinstance(notif, ua.StatusChangeNotification):
                code = notif.Status
                if not code.is_good() and self._lost is None:
                    self._lost = DeviceError(
                        "subscription lost", f"status change {status_name(code)}"
                    )
        if not changes:
            return
        self._last_ts = max(time.time(), self._last_ts + 1e-6)
        if len(self._publishes) >= MAX_PUBLISHES:
            self._publishes.popleft()
            self.errors["overflow"] += 1
        self._publishes.append((self._last_ts, changes))

    # -- poll mode --------------------------------------------------------------------------------

    async def _check_readable(self, client: Client, resolved: list[Resolved]) -> list[Resolved]:
        """Read every tag once (one request): what does not exist or cannot be read is reported
        now, with the server's reason, and left out; the rest is returned."""
        self.problems = {r.tag.name: r.problem for r in resolved if r.problem is not None}
        found = [r for r in resolved if r.node is not None]
        ids = [r.node for r in found]
        values: list[ua.DataValue] = []
        for start in range(0, len(ids), ITEMS_PER_REQUEST):  # servers cap nodes per Read
            chunk = ids[start : start + ITEMS_PER_REQUEST]
            values += await client.uaclient.read_attributes(chunk, ua.AttributeIds.Value)
        usable: list[Resolved] = []
        for r, dv in zip(found, values, strict=True):
            code = dv.StatusCode
            if code is not None and code.is_bad() and _is_permanent(code):
                self.problems[r.tag.name] = status_name(code)
            else:
                usable.append(r)
        self._read_ids = [r.node for r in usable]
        self._read_tags = [r.tag.name for r in usable]
        return usable

    async def _read_all(self, client: Client) -> list[Reading]:
        if not self._read_ids:
            return []
        self.read_requests += 1
        values = await client.uaclient.read_attributes(self._read_ids, ua.AttributeIds.Value)
        now = time.time()
        return [reading(name, dv, now) for name, dv in zip(self._read_tags, values, strict=True)]

    # -- poll -------------------------------------------------------------------------------------

    async def poll(self) -> list[Reading]:
        client = self._client
        if client is None:
            raise DeviceError("connection lost", "not connected")
        if self._lost is not None:
            raise self._lost
        readings: list[Reading] = []
        # Poll mode: every cycle has every tag, the missing ones bad. Subscribe mode reports by
        # exception: once after each connect.
        if self._report_problems or self.config.mode == "poll":
            self._report_problems = False
            now = time.time()
            readings.extend(Reading.bad(name, now, why) for name, why in self.problems.items())
        if self.config.mode == "poll":
            try:
                readings.extend(await self._read_all(client))
            except (ua.UaStatusCodeError, OSError, TimeoutError, ConnectionError) as exc:
                self.errors["read"] += 1
                raise why(exc, self.config.connection) from exc
            return readings
        publishes, self._publishes = self._publishes, collections.deque()
        handles = self._handles
        for ts, changes in publishes:
            for item in changes:
                name = handles.get(item.ClientHandle)
                if name is not None:
                    readings.append(reading(name, item.Value, ts))
        return readings


def _is_permanent(code: ua.StatusCode) -> bool:
    """Bad for good (the node is not there, or not for us) rather than bad for now."""
    return status_name(code) in {
        "BadNodeIdUnknown",
        "BadNodeIdInvalid",
        "BadNotReadable",
        "BadUserAccessDenied",
        "BadAttributeIdInvalid",
        "BadSecurityModeInsufficient",
    }
