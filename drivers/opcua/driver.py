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

Commands: writable tags are written with the node's DataType (read at each connect) and read
back (``writes``); methods listed under ``methods:`` are called with checked arguments
(``methods``). Alarms & Conditions (``events:``) are event monitored items on the same
subscription (one of their own in poll mode); each event becomes a document on the device's
event stream (``events``), handed to the agent by ``take_events`` after each poll. After each
connect a ConditionRefresh asks the server for every condition still active or unacknowledged,
so an alarm raised while the agent was away is not missed. ``acknowledge`` and ``confirm``
calls answer a condition by its latest EventId.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from asyncua import Client, ua
from asyncua.common import ua_utils
from asyncua.common.subscription import Subscription

from drivers.base import CallResult, DeviceBase, DeviceError, Driver, Reading, WriteError
from drivers.base.driver import own_config
from drivers.opcua.config import (
    CONDITION_METHODS,
    DEPRECATED_POLICIES,
    OpcuaDevice,
    OpcuaProfile,
    OpcuaTag,
)
from drivers.opcua.convert import reading, status_name
from drivers.opcua.events import Received, Selection, event_doc, event_filter, resolve_node
from drivers.opcua.methods import Bound, arguments, bind
from drivers.opcua.nodes import Resolved, resolve_tags
from drivers.opcua.session import close_session, open_session, why
from drivers.opcua.writes import INT_RANGES, WRITABLE, Shape, outputs, same, to_variant

log = logging.getLogger(__name__)

#: Publishes kept between two polls. More means the agent stalled for that many intervals; the
#: oldest go (counted as "overflow") so memory stays bounded whatever the server sends.
MAX_PUBLISHES = 1000

#: Monitored items created (or nodes checked) per request: servers cap the operations of a call.
ITEMS_PER_REQUEST = 1000

#: Events kept between two polls; the oldest go (counted as "event_overflow") beyond it.
MAX_EVENTS = 1000
#: Conditions remembered for acknowledging (latest EventId each); the oldest go beyond it.
MAX_CONDITIONS = 10_000
#: The standard methods acknowledge and confirm call on a condition.
_CONDITION_METHOD_IDS = {
    "acknowledge": ua.ObjectIds.AcknowledgeableConditionType_Acknowledge,
    "confirm": ua.ObjectIds.AcknowledgeableConditionType_Confirm,
}


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
        device = own_config(device, OpcuaDevice)
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
        # Writes: writable tag → its node and the shape of its values (read at connect), or why
        # it cannot be written now.
        self._write_nodes: dict[str, ua.NodeId] = {}
        self._shapes: dict[str, Shape | str] = {}
        # Methods by config name, bound at connect.
        self._methods: dict[str, Bound] = {}
        # Events: client handle → selection, the events since the last poll, and the conditions
        # seen (condition id → its node, latest EventId and alarm name) for acknowledging.
        self._selections: dict[int, Selection] = {}
        self._events: collections.deque[Received] = collections.deque()
        self._conditions: dict[str, tuple[ua.NodeId, bytes, str]] = {}
        self._namespaces: list[str] = []
        # Methods and event subscriptions that cannot work: name → reason last logged, so a
        # reason is logged once, not at every reconnect.
        self._logged_refusals: dict[str, str] = {}
        policy = device.connection.security.policy
        if policy in DEPRECATED_POLICIES:
            log.warning(
                "deprecated security policy %s (SHA-1) allowed by allow_deprecated: true",
                policy,
                extra={"device": device.name, "policy": policy},
            )

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
            self._namespaces = list(await client.get_namespace_array())
            resolved = await self._check_readable(client, await resolve_tags(client, self._tags))
            await self._read_shapes(client, resolved)
            self._methods = await bind(client, self.config.methods, self._namespaces)
            self._log_methods()
            if self.config.mode == "subscribe" or self.config.events:
                data = resolved if self.config.mode == "subscribe" else []
                await self._subscribe(client, data)
                await self._subscribe_events(client)
        except BaseException as exc:
            await close_session(client, conn.timeout)
            if isinstance(exc, asyncio.CancelledError | DeviceError):
                raise
            raise why(exc, conn) from exc
        self._client = client
        self._report_problems = True
        self._log_problems()

    def _log_methods(self) -> None:
        for name, bound in self._methods.items():
            if bound.problem is not None and self._first_time(f"method {name}", bound.problem):
                log.warning(
                    "method not callable: %s: %s",
                    name,
                    bound.problem,
                    extra={"device": self.config.name, "method": name, "reason": bound.problem},
                )

    def _first_time(self, what: str, reason: str) -> bool:
        """Whether ``what`` fails for ``reason`` for the first time (then log it), not again."""
        if self._logged_refusals.get(what) == reason:
            return False
        self._logged_refusals[what] = reason
        return True

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
        self._selections = {}
        self._methods = {}
        self._publishes.clear()
        if client is not None:
            await close_session(client, self.config.connection.timeout)

    # -- subscribe mode ---------------------------------------------------------------------------

    async def _subscribe(self, client: Client, resolved: list[Resolved]) -> None:
        # Poll mode has a subscription only for events: they arrive at the poll interval.
        interval_ms = (
            self.config.publishing_interval
            if self.config.mode == "subscribe"
            else self.config.poll_interval
        ) * 1000
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
        return self._monitored(
            node, ua.AttributeIds.Value, sampling * 1000, tag.queue_size, mfilter
        )

    def _monitored(
        self,
        node: ua.NodeId,
        attribute: int,
        sampling_ms: float,
        queue: int,
        mfilter: ua.DataChangeFilter | ua.EventFilter | None,
    ) -> ua.MonitoredItemCreateRequest:
        """A reporting monitored item of ``node``'s ``attribute`` under a new client handle
        (the oldest queued notification is dropped when the queue is full)."""
        params = ua.MonitoringParameters()
        self._next_handle += 1
        params.ClientHandle = self._next_handle
        params.SamplingInterval = sampling_ms
        params.QueueSize = queue
        params.DiscardOldest = True
        if mfilter is not None:
            params.Filter = mfilter
        item = ua.ReadValueId()
        item.NodeId = node
        item.AttributeId = attribute
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = params
        return request

    def _on_publish(self, notifications: list[Any] | None) -> None:
        """One publish: its data changes stamped with the arrival time, its events made
        documents; a ``Bad`` status change (the server ended the subscription) is a lost
        session."""
        if not notifications:
            return  # a keepalive
        changes: list[Any] = []
        for notif in notifications:
            if isinstance(notif, ua.DataChangeNotification):
                changes.extend(notif.MonitoredItems)
            elif isinstance(notif, ua.EventNotificationList):
                self._on_events(notif.Events)
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

    # -- events (Alarms & Conditions) -------------------------------------------------------------

    async def _subscribe_events(self, client: Client) -> None:
        """One event monitored item per ``events`` entry, then a ConditionRefresh, so the
        conditions active while we were away are reported again."""
        sub = self._sub
        if sub is None or not self.config.events:
            return
        self._selections = {}
        requests: list[ua.MonitoredItemCreateRequest] = []
        for entry in self.config.events:
            try:
                source = resolve_node(entry.source, self._namespaces)
                evfilter, selection = await event_filter(client, entry, self._namespaces)
            except (ValueError, ua.UaStatusCodeError) as exc:
                self._event_problem(entry.name, str(exc))
                continue
            request = self._monitored(
                source, ua.AttributeIds.EventNotifier, 0, MAX_EVENTS, evfilter
            )
            requests.append(request)
            self._selections[request.RequestedParameters.ClientHandle] = selection
        if not requests:
            return
        results = await sub.create_monitored_items(requests)
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, ua.StatusCode):
                handle = request.RequestedParameters.ClientHandle
                selection = self._selections.pop(handle)
                self._event_problem(selection.entry.name, status_name(result))
        if not self._selections:
            return
        refresh = ua.CallMethodRequest()
        refresh.ObjectId = ua.NodeId(ua.ObjectIds.ConditionType)
        refresh.MethodId = ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh)
        refresh.InputArguments = [ua.Variant(sub.subscription_id, ua.VariantType.UInt32)]
        try:
            [result] = await client.uaclient.call([refresh])
            code = result.StatusCode
        except ua.UaStatusCodeError as exc:  # the whole service refused: a server without A&C
            code = ua.StatusCode(exc.code)
        if not code.is_good() and self._first_time("ConditionRefresh", status_name(code)):
            log.info(
                "ConditionRefresh not supported: active alarms show at their next change",
                extra={"device": self.config.name, "reason": status_name(code)},
            )

    def _event_problem(self, name: str, reason: str) -> None:
        if not self._first_time(f"events {name}", reason):
            return
        log.warning(
            "events not received: %s: %s",
            name,
            reason,
            extra={"device": self.config.name, "events": name, "reason": reason},
        )

    def _on_events(self, events: list[ua.EventFieldList]) -> None:
        now = time.time()
        for fields in events:
            selection = self._selections.get(fields.ClientHandle)
            if selection is None:
                continue
            try:
                got = event_doc(selection, fields.EventFields, self._namespaces, now)
            except Exception:  # a hostile server's event must not end the subscription
                self.errors["event"] += 1
                continue
            if got.condition is not None and got.event_id is not None:
                key = got.doc.get("condition_id", "")
                self._conditions.pop(key, None)
                self._conditions[key] = (got.condition, got.event_id, str(got.doc["alarm"]))
                while len(self._conditions) > MAX_CONDITIONS:
                    self._conditions.pop(next(iter(self._conditions)))
            if len(self._events) >= MAX_EVENTS:
                self._events.popleft()
                self.errors["event_overflow"] += 1
            self._events.append(got)

    def take_events(self) -> list[dict[str, Any]]:
        events, self._events = self._events, collections.deque()
        return [e.doc for e in events]

    # -- writes -----------------------------------------------------------------------------------

    async def _read_shapes(self, client: Client, resolved: list[Resolved]) -> None:
        """Each writable tag's DataType and ValueRank: what its writes must be."""
        self._write_nodes = {}
        self._shapes = {}
        nodes = {r.tag.name: r.node for r in resolved if r.tag.writable and r.node is not None}
        for tag in self._tags:
            if tag.writable and tag.name not in nodes:
                self._shapes[tag.name] = self.problems.get(tag.name, "node not found")
        if not nodes:
            return
        ids = list(nodes.values())
        dtypes = await client.uaclient.read_attributes(ids, ua.AttributeIds.DataType)
        ranks = await client.uaclient.read_attributes(ids, ua.AttributeIds.ValueRank)
        # A server may leave ValueRank at "scalar or array": the value it holds then says.
        values = await client.uaclient.read_attributes(ids, ua.AttributeIds.Value)
        tags = {t.name: t for t in self._tags}
        rows = zip(nodes.items(), dtypes, ranks, values, strict=True)
        for (name, node), dtype, rank, current in rows:
            self._write_nodes[name] = node
            if dtype.StatusCode is not None and dtype.StatusCode.is_bad():
                self._shapes[name] = f"DataType unreadable ({status_name(dtype.StatusCode)})"
                continue
            dtype_id = dtype.Value.Value if dtype.Value is not None else None
            if not isinstance(dtype_id, ua.NodeId):
                self._shapes[name] = "DataType unreadable"
                continue
            vtype = await _variant_type(client, dtype_id)
            if vtype not in WRITABLE:
                self._shapes[name] = f"its DataType {dtype_id.to_string()} cannot be written"
                continue
            value_rank = rank.Value.Value if rank.Value is not None else -1
            held = current.Value.Value if current.Value is not None else None
            array = (isinstance(value_rank, int) and value_rank >= 1) or isinstance(held, list)
            tag = tags[name]
            self._shapes[name] = Shape(vtype, array, min=tag.min, max=tag.max)

    def check_write(self, tag: str, value: Any) -> None:
        self._variant(tag, value)

    def _variant(self, tag: str, value: Any) -> ua.Variant:
        shape = self._shapes.get(tag)
        if shape is None:
            if any(t.name == tag and t.writable for t in self._tags):
                raise WriteError("device not connected yet (the node's type is read at connect)")
            raise WriteError(f"tag '{tag}' is not writable")
        if isinstance(shape, str):
            raise WriteError(f"tag '{tag}' cannot be written: {shape}")
        return to_variant(value, shape, f"tag '{tag}'")

    async def write(self, tag: str, value: Any) -> None:
        variant = self._variant(tag, value)
        client = self._client
        if client is None:
            raise DeviceError("connection lost", "not connected")
        node = self._write_nodes[tag]
        try:
            [code] = await client.uaclient.write_attributes(
                [node], [ua.DataValue(variant)], ua.AttributeIds.Value
            )
            if not code.is_good():
                raise WriteError(f"refused by the server: {status_name(code)}")
            [back] = await client.uaclient.read_attributes([node], ua.AttributeIds.Value)
        except (ua.UaStatusCodeError, OSError, TimeoutError, ConnectionError) as exc:
            self.errors["write"] += 1
            raise why(exc, self.config.connection) from exc
        if back.StatusCode is not None and back.StatusCode.is_bad():
            raise WriteError(f"written, but reading it back failed: {status_name(back.StatusCode)}")
        if not same(variant, back.Value):
            got = back.Value.Value if back.Value is not None else None
            raise WriteError(f"written, but it reads back {got!r}")

    # -- methods ----------------------------------------------------------------------------------

    def check_call(self, method: str, args: Any) -> None:
        self._call_request(method, args)

    def _call_request(self, method: str, args: Any) -> ua.CallMethodRequest:
        """The request for a call, checked; ``WriteError`` when refused."""
        if method in CONDITION_METHODS and self.config.events:
            return self._condition_request(method, args)
        declared = {m.name: m for m in self.config.methods}
        found = declared.get(method)
        if found is None:
            known = ", ".join(declared) or "none are declared under methods"
            raise WriteError(f"unknown method '{method}' (callable: {known})")
        variants = arguments(found, args)
        bound = self._methods.get(method)
        if bound is None:
            raise WriteError("device not connected yet (methods are looked up at connect)")
        if bound.problem is not None or bound.object is None or bound.method is None:
            raise WriteError(f"method '{method}' cannot be called: {bound.problem}")
        request = ua.CallMethodRequest()
        request.ObjectId = bound.object
        request.MethodId = bound.method
        request.InputArguments = variants
        return request

    def _condition_request(self, method: str, args: Any) -> ua.CallMethodRequest:
        """Acknowledge or Confirm of a condition named by its condition id or alarm name."""
        if isinstance(args, Mapping):  # by name, as platforms with named inputs send them
            unknown = sorted(str(k) for k in args if k not in ("condition", "comment"))
            if unknown:
                raise WriteError(f"{method} has no input {', '.join(unknown)}")
            args = [args.get("condition"), args.get("comment", "")]
        if not isinstance(args, list) or not 1 <= len(args) <= 2:
            raise WriteError(f"{method} takes [condition, comment]: a condition_id or alarm name")
        which, comment = args[0], args[1] if len(args) == 2 else ""
        if not isinstance(which, str) or not isinstance(comment, str):
            raise WriteError(f"{method} takes [condition, comment] as two strings")
        found = self._conditions.get(which)
        if found is None:
            named = [c for c in self._conditions.values() if c[2] == which]
            if len(named) > 1:
                raise WriteError(f"alarm '{which}' is several conditions: give its condition_id")
            found = named[0] if named else None
        if found is None:
            raise WriteError(f"no condition '{which}' has been reported by this device")
        node, event_id, _ = found
        request = ua.CallMethodRequest()
        request.ObjectId = node
        request.MethodId = ua.NodeId(_CONDITION_METHOD_IDS[method])
        request.InputArguments = [
            ua.Variant(event_id, ua.VariantType.ByteString),
            ua.Variant(ua.LocalizedText(comment[:1000]), ua.VariantType.LocalizedText),
        ]
        return request

    async def call(self, method: str, args: Any) -> CallResult:
        request = self._call_request(method, args)
        client = self._client
        if client is None:
            raise DeviceError("connection lost", "not connected")
        try:
            [result] = await client.uaclient.call([request])
        except ua.UaStatusCodeError as exc:
            return CallResult(status_name(ua.StatusCode(exc.code)))
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.errors["call"] += 1
            raise why(exc, self.config.connection) from exc
        status = status_name(result.StatusCode)
        bad_inputs = [
            f"{i}: {status_name(code)}"
            for i, code in enumerate(result.InputArgumentResults or [])
            if not code.is_good()
        ]
        if bad_inputs:
            status = f"{status} (arguments {', '.join(bad_inputs)})"
        return CallResult(status, outputs(result.OutputArguments or []))

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


async def _variant_type(client: Client, dtype: ua.NodeId) -> ua.VariantType | None:
    """The built-in type of a DataType: itself, or the built-in type it derives from (UtcTime
    is a DateTime, an enumeration an Int32); None when it is a structure."""
    if dtype.NamespaceIndex == 0 and isinstance(dtype.Identifier, int):
        try:
            vtype = ua.VariantType(dtype.Identifier)
        except ValueError:
            vtype = None
        if vtype is not None and (vtype in INT_RANGES or vtype in WRITABLE):
            return vtype
    try:
        found = await ua_utils.data_type_to_variant_type(client.get_node(dtype))
    except Exception:  # a DataType the server cannot describe: not writable
        return None
    return found if isinstance(found, ua.VariantType) else None


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
