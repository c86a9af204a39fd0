"""An OPC UA server modelling a CNC lathe, for development and tests (asyncua).

Address space (namespace ``urn:vendor:cnc``, under Objects/Machine)::

    Machine/Spindle/Speed        Double  rpm      s=Spindle.Speed
    Machine/Spindle/Load         Float   %        s=Spindle.Load
    Machine/Spindle/Temperature  Double  degC     s=Spindle.Temperature
    Machine/Spindle/Vibration    Double[64] mm/s  s=Spindle.Vibration   (a waveform)
    Machine/PartCount            UInt32           i=1042
    Machine/ProgramName          String           s=Program.Name
    Machine/State                String           s=Machine.State   (IDLE, RUNNING, ALARM)
    Machine/Alarm                Boolean          s=Machine.Alarm
    Machine/CycleEnd             DateTime         s=Machine.CycleEnd
    Machine/Types/<Type>         every built-in numeric type, Boolean, String, DateTime, Int32[]
                                 (writable, for the write path's type checks)
    Machine/Secret               Int32, not readable (access level 0)
    Machine/Setpoints/<Name>     writable set-points: FeedOverride Double %, SpindleTarget
                                 Double rpm, BatchSize UInt32, Recipe String, Coolant Boolean
    Machine/StartJob(Job String, Count UInt32) -> JobId UInt32    method s=Machine.StartJob
                                 (sets ProgramName and BatchSize; Count 0 is BadInvalidArgument)
    Machine/ResetCounter() -> Previous UInt32                    method s=Machine.ResetCounter
    Machine/Alarms/<Condition>   AlarmConditionType conditions emitted by the Server object:
                                 SpindleOverTemp (severity 700), DoorOpen (severity 300)

Alarms & Conditions: ``raise_alarm``/``clear_alarm`` drive a condition (tests), and with
``alarm_period`` SpindleOverTemp raises and clears on that schedule by itself. A condition stays
retained (ConditionRefresh reports it) while active or unacknowledged; Acknowledge and Confirm
(the standard methods of AcknowledgeableConditionType) work with the condition's latest EventId.
``call_delay`` makes StartJob take that long, so a test can drop the session mid-call.

Security: None plus Basic256Sha256 (and the two Aes policies) Sign and SignAndEncrypt when a
certificate is given, or exactly the endpoints ``policies`` names (asyncua's SecurityPolicyType
names: ``NoSecurity``, ``Basic256_SignAndEncrypt``...). ``policy_certs`` gives a policy its own
certificate, as a machine with an RSA-SHA1 and an RSA-SHA256 certificate does, so each endpoint
carries the certificate of its policy. A user with a password when ``users`` is given (then
anonymous is off, unless ``tokens`` says which user tokens the endpoints accept); client
certificates are trusted only when listed (``trusted``). ``stop()`` then ``start()`` serves again
on the same port, which is how tests restart the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

from simulators.service import Service, cancel

NAMESPACE = "urn:vendor:cnc"
APP_URI = "urn:edge-agent:sim:cnc"
WAVE_POINTS = 64


@dataclass(frozen=True)
class Point:
    """One variable: its browse path under Machine, node id, type and first value."""

    path: str
    node: str | int
    vtype: ua.VariantType
    value: Any
    unit: str | None = None
    array: bool = False
    readable: bool = True
    writable: bool = False

    @property
    def node_string(self) -> str:
        """The id as a config names it, by namespace URI."""
        kind = "i" if isinstance(self.node, int) else "s"
        return f"nsu={NAMESPACE};{kind}={self.node}"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


_T0 = datetime(2026, 11, 23, 8, 0, 0, tzinfo=UTC)

MACHINE: tuple[Point, ...] = (
    Point("Spindle/Speed", "Spindle.Speed", ua.VariantType.Double, 1200.0, "rpm"),
    Point("Spindle/Load", "Spindle.Load", ua.VariantType.Float, 42.5, "%"),
    Point("Spindle/Temperature", "Spindle.Temperature", ua.VariantType.Double, 35.2, "degC"),
    Point(
        "Spindle/Vibration",
        "Spindle.Vibration",
        ua.VariantType.Double,
        [0.0] * WAVE_POINTS,
        "mm/s",
        array=True,
    ),
    Point("PartCount", 1042, ua.VariantType.UInt32, 0),
    Point("ProgramName", "Program.Name", ua.VariantType.String, "O1234 FLANGE"),
    Point("State", "Machine.State", ua.VariantType.String, "RUNNING"),
    Point("Alarm", "Machine.Alarm", ua.VariantType.Boolean, False),
    Point("CycleEnd", "Machine.CycleEnd", ua.VariantType.DateTime, _T0),
    Point("Secret", "Machine.Secret", ua.VariantType.Int32, 7, readable=False),
)

TYPES: tuple[Point, ...] = (
    Point("Types/Boolean", "Types.Boolean", ua.VariantType.Boolean, True, writable=True),
    Point("Types/SByte", "Types.SByte", ua.VariantType.SByte, -128, writable=True),
    Point("Types/Byte", "Types.Byte", ua.VariantType.Byte, 255, writable=True),
    Point("Types/Int16", "Types.Int16", ua.VariantType.Int16, -32768, writable=True),
    Point("Types/UInt16", "Types.UInt16", ua.VariantType.UInt16, 65535, writable=True),
    Point("Types/Int32", "Types.Int32", ua.VariantType.Int32, -2147483648, writable=True),
    Point("Types/UInt32", "Types.UInt32", ua.VariantType.UInt32, 4294967295, writable=True),
    Point("Types/Int64", "Types.Int64", ua.VariantType.Int64, -9223372036854775808, writable=True),
    Point(
        "Types/UInt64", "Types.UInt64", ua.VariantType.UInt64, 18446744073709551615, writable=True
    ),
    Point("Types/Float", "Types.Float", ua.VariantType.Float, 229.8, writable=True),
    Point("Types/Double", "Types.Double", ua.VariantType.Double, 0.1, writable=True),
    Point("Types/String", "Types.String", ua.VariantType.String, "Grüße, CNC-7", writable=True),
    Point("Types/DateTime", "Types.DateTime", ua.VariantType.DateTime, _T0, writable=True),
    Point(
        "Types/Int32Array",
        "Types.Int32Array",
        ua.VariantType.Int32,
        [1, -2, 3],
        array=True,
        writable=True,
    ),
)

SETPOINTS: tuple[Point, ...] = (
    Point(
        "Setpoints/FeedOverride",
        "Setpoints.FeedOverride",
        ua.VariantType.Double,
        100.0,
        "%",
        writable=True,
    ),
    Point(
        "Setpoints/SpindleTarget",
        "Setpoints.SpindleTarget",
        ua.VariantType.Double,
        1200.0,
        "rpm",
        writable=True,
    ),
    Point("Setpoints/BatchSize", "Setpoints.BatchSize", ua.VariantType.UInt32, 10, writable=True),
    Point("Setpoints/Recipe", "Setpoints.Recipe", ua.VariantType.String, "FLANGE-A", writable=True),
    Point("Setpoints/Coolant", "Setpoints.Coolant", ua.VariantType.Boolean, True, writable=True),
)

POINTS: dict[str, Point] = {p.path: p for p in MACHINE + TYPES + SETPOINTS}


class _Users(UserManager):  # type: ignore[misc]
    """Name/password pairs; anyone else is refused (anonymous too, unless ``anonymous``)."""

    def __init__(self, users: Mapping[str, str], anonymous: bool = False) -> None:
        self._users = dict(users)
        self._anonymous = anonymous

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User)
        if username is None and self._anonymous:
            return User(role=UserRole.User)
        return None


@dataclass
class ServerCert:
    """The server's own certificate (DER or PEM) and key."""

    cert_file: Path
    key_file: Path


#: The secure endpoints offered by default when a certificate is given.
MODERN_POLICIES = (
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
)

#: User token kinds by the name ``tokens`` (and ``--token``) uses.
TOKENS: dict[str, type] = {
    "anonymous": ua.AnonymousIdentityToken,
    "username": ua.UserNameIdentityToken,
    "certificate": ua.X509IdentityToken,
}

_Key = Any  # a private key as uacrypto loads it


class _Server(Server):  # type: ignore[misc]
    """asyncua's server with one certificate per security policy where it is given one.

    asyncua gives every endpoint the server's single certificate. A real machine may hold
    several (one per policy family), and a client must encrypt for the one of the endpoint it
    opens; here each policy's endpoints and channel factories get the pair ``per_policy`` names
    for its URI, the default pair otherwise."""

    def __init__(self, per_policy: Mapping[str, tuple[Any, _Key]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._per_policy = dict(per_policy)

    async def _setup_server_nodes(self) -> None:
        default = (self.iserver.certificate, self.iserver.private_key)
        for policy_type in self._security_policy:
            policy, mode, level = security_policies.SECURITY_POLICY_TYPE_MAP[policy_type]
            cert, key = self._per_policy.get(policy.URI, default)
            if policy is not security_policies.SecurityPolicyNone and not (cert and key):
                continue
            self.iserver.certificate, self.iserver.private_key = cert, key
            try:
                self._set_endpoints(policy, mode, level)
            finally:
                self.iserver.certificate, self.iserver.private_key = default
            self._policies.append(
                security_policies.SecurityPolicyFactory(
                    policy, mode, cert, key, permission_ruleset=self._permission_ruleset
                )
            )


@dataclass
class CncSimulator(Service):
    """The lathe. ``update_interval=None`` keeps values still (tests set them)."""

    port: int
    host: str = "127.0.0.1"
    cert: ServerCert | None = None
    users: Mapping[str, str] | None = None
    trusted: Iterable[Path] = ()
    policies: Sequence[str] | None = None
    policy_certs: Mapping[str, ServerCert] = field(default_factory=dict)
    tokens: Sequence[str] | None = None
    update_interval: float | None = 0.1
    extra_points: int = 0
    #: SpindleOverTemp raises and clears by itself every this many seconds (None: tests drive it)
    alarm_period: float | None = None
    #: StartJob answers after this many seconds (a test stops the server meanwhile)
    call_delay: float = 0.0
    read_requests: list[list[str]] = field(default_factory=list)
    #: every method call served: (method name, input values)
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)
    _server: Server | None = None
    _nodes: dict[str, Any] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _values: dict[str, Any] = field(default_factory=dict)
    _alarms: dict[str, _Condition] = field(default_factory=dict)
    _alarm_task: asyncio.Task[None] | None = None
    _next_job: int = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/cnc"

    async def start(self) -> None:
        per_policy = {}
        for name, pair in self.policy_certs.items():
            uri = getattr(security_policies, f"SecurityPolicy{name.replace('_', '')}").URI
            per_policy[uri] = (
                await uacrypto.load_certificate(str(pair.cert_file)),
                await uacrypto.load_private_key(str(pair.key_file)),
            )
        anonymous = self.tokens is not None and "anonymous" in self.tokens
        users = _Users(self.users, anonymous) if self.users is not None else None
        server = _Server(per_policy, user_manager=users)
        server.iserver.bind_condition_methods = True  # ConditionRefresh answered
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("edge-agent CNC lathe simulator")
        await server.set_application_uri(APP_URI)
        if self.policies is not None:
            names = list(self.policies)
        else:
            names = ["NoSecurity"]
            if self.cert is not None or self.policy_certs:
                names += MODERN_POLICIES
        policies = [ua.SecurityPolicyType[n] for n in names]
        if self.cert is not None:
            await server.load_certificate(str(self.cert.cert_file))
            await server.load_private_key(str(self.cert.key_file))
        if self.cert is not None or self.policy_certs:
            trusted = [await uacrypto.load_certificate(str(p)) for p in self.trusted]
            pinned = {uacrypto.der_from_x509(c) for c in trusted}

            async def validate(cert: Any, app: ua.ApplicationDescription) -> None:
                if uacrypto.der_from_x509(cert) not in pinned:
                    raise ua.uaerrors.BadCertificateUntrusted()

            server.set_certificate_validator(validate)
        server.set_security_policy(policies)
        if self.tokens is not None:
            server.set_identity_tokens([TOKENS[t] for t in self.tokens])
        elif self.users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        ns = await server.register_namespace(NAMESPACE)
        await self._build(server, ns)
        self._count_reads(server)
        await server.start()
        self._server = server
        if self.update_interval is not None:
            self._task = asyncio.create_task(self._run(self.update_interval))
        if self.alarm_period is not None:
            self._alarm_task = asyncio.create_task(self._alarm_schedule(self.alarm_period))

    async def _build(self, server: Server, ns: int) -> None:
        objects = server.nodes.objects
        machine = await objects.add_object(
            ua.NodeId("Machine", ns), ua.QualifiedName("Machine", ns)
        )
        folders: dict[str, Any] = {"": machine}
        for point in MACHINE + TYPES + SETPOINTS:
            parent_path, _, name = point.path.rpartition("/")
            parent = folders.get(parent_path)
            if parent is None:
                parent = await machine.add_object(
                    ua.NodeId(parent_path, ns), ua.QualifiedName(parent_path, ns)
                )
                folders[parent_path] = parent
            value = self._values.get(point.path, point.value)
            variant = ua.Variant(value, point.vtype, is_array=point.array)
            node = await parent.add_variable(
                ua.NodeId(point.node, ns), ua.QualifiedName(name, ns), variant
            )
            if point.unit is not None:
                await _add_unit(node, f"{point.node}.EngineeringUnits", point.unit, ns)
            if not point.readable:
                await node.write_attribute(
                    ua.AttributeIds.AccessLevel, ua.DataValue(ua.Variant(0, ua.VariantType.Byte))
                )
                await node.write_attribute(
                    ua.AttributeIds.UserAccessLevel,
                    ua.DataValue(ua.Variant(0, ua.VariantType.Byte)),
                )
            if point.writable:
                await node.set_writable()
            self._nodes[point.path] = node
        await self._add_methods(machine, ns)
        await self._add_alarms(server, machine, ns)
        if self.extra_points:
            bulk = await machine.add_object(ua.NodeId("Bulk", ns), ua.QualifiedName("Bulk", ns))
            for i in range(self.extra_points):
                path = f"Bulk/P{i:05d}"
                node = await bulk.add_variable(
                    ua.NodeId(f"Bulk.P{i:05d}", ns),
                    ua.QualifiedName(f"P{i:05d}", ns),
                    ua.Variant(0.0, ua.VariantType.Double),
                )
                self._nodes[path] = node

    def _count_reads(self, server: Server) -> None:
        """Record the node ids of every Read request, so tests can count requests per cycle."""
        service = server.iserver.attribute_service
        inner = service.read

        hidden = {self._nodes[p.path].nodeid for p in MACHINE + TYPES if not p.readable}

        def read(params: ua.ReadParameters) -> list[ua.DataValue]:
            self.read_requests.append([r.NodeId.to_string() for r in params.NodesToRead])
            results: list[ua.DataValue] = inner(params)
            # asyncua serves every value whatever its access level; a real machine does not.
            return [
                ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadNotReadable))
                if r.NodeId in hidden and r.AttributeId == ua.AttributeIds.Value
                else dv
                for r, dv in zip(params.NodesToRead, results, strict=True)
            ]

        service.read = read

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        alarm_task, self._alarm_task = self._alarm_task, None
        await cancel(alarm_task)
        server, self._server = self._server, None
        if server is not None:
            # Values survive a restart, as a machine's would.
            for path, node in self._nodes.items():
                with contextlib.suppress(Exception):
                    self._values[path] = await node.read_value()
            self._nodes = {}
            await server.stop()

    async def set_value(self, path: str, value: Any, source_ts: datetime | None = None) -> None:
        """Write a value as the machine would (``path`` under Machine, e.g. Spindle/Speed)."""
        point = POINTS.get(path)
        vtype = point.vtype if point is not None else ua.VariantType.Double
        is_array = point.array if point is not None else False
        dv = ua.DataValue(
            ua.Variant(value, vtype, is_array=is_array),
            SourceTimestamp=source_ts or datetime.now(UTC),
            ServerTimestamp=datetime.now(UTC),
        )
        await self._nodes[path].write_value(dv)

    async def value(self, path: str) -> Any:
        return await self._nodes[path].read_value()

    # -- methods ----------------------------------------------------------------------------------

    async def _add_methods(self, machine: Any, ns: int) -> None:
        """StartJob and ResetCounter on Machine, with their argument descriptions."""

        async def start_job(parent: ua.NodeId, job: ua.Variant, count: ua.Variant) -> Any:
            self.calls.append(("StartJob", [job.Value, count.Value]))
            if self.call_delay:
                await asyncio.sleep(self.call_delay)
            if not count.Value:
                return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
            self._next_job += 1
            await self.set_value("ProgramName", job.Value)
            await self.set_value("Setpoints/BatchSize", count.Value)
            return [ua.Variant(self._next_job, ua.VariantType.UInt32)]

        async def reset_counter(parent: ua.NodeId) -> Any:
            self.calls.append(("ResetCounter", []))
            previous = await self.value("PartCount")
            await self.set_value("PartCount", 0)
            return [ua.Variant(previous, ua.VariantType.UInt32)]

        await machine.add_method(
            ua.NodeId("Machine.StartJob", ns),
            ua.QualifiedName("StartJob", ns),
            start_job,
            [_argument("Job", ua.VariantType.String), _argument("Count", ua.VariantType.UInt32)],
            [_argument("JobId", ua.VariantType.UInt32)],
        )
        await machine.add_method(
            ua.NodeId("Machine.ResetCounter", ns),
            ua.QualifiedName("ResetCounter", ns),
            reset_counter,
            [],
            [_argument("Previous", ua.VariantType.UInt32)],
        )

    # -- alarms & conditions ----------------------------------------------------------------------

    async def _add_alarms(self, server: Server, machine: Any, ns: int) -> None:
        """One AlarmConditionType condition per entry of ALARMS, emitted by the Server object
        (where clients subscribe, ``i=2253``) with the machine part as its source; Acknowledge
        and Confirm answered for them."""
        folder = await machine.add_object(ua.NodeId("Alarms", ns), ua.QualifiedName("Alarms", ns))
        self._alarms = {}
        for name, (source_path, severity, message) in ALARMS.items():
            node = await folder.add_object(
                ua.NodeId(f"Alarms.{name}", ns), ua.QualifiedName(name, ns)
            )
            source = self._nodes[source_path] if source_path else machine
            gen = await server.get_event_generator(ua.ObjectIds.AlarmConditionType)
            event = gen.event
            event.SourceNode = source.nodeid
            event.SourceName = source_path or "Machine"
            event.ConditionName = name
            event.Severity = severity
            event.NodeId = node.nodeid
            self._alarms[name] = _Condition(gen, message)
        methods = {
            ua.ObjectIds.AcknowledgeableConditionType_Acknowledge: self._acknowledge,
            ua.ObjectIds.AcknowledgeableConditionType_Confirm: self._confirm,
        }
        for method_id, callback in methods.items():
            server.link_method(server.get_node(ua.NodeId(method_id)), callback)

    def _condition_at(self, node: ua.NodeId) -> _Condition | None:
        return next((c for c in self._alarms.values() if c.gen.event.NodeId == node), None)

    async def _acknowledge(
        self, parent: ua.NodeId, event_id: ua.Variant, comment: ua.Variant
    ) -> ua.StatusCode:
        return await self._transition(parent, event_id, "AckedState")

    async def _confirm(
        self, parent: ua.NodeId, event_id: ua.Variant, comment: ua.Variant
    ) -> ua.StatusCode:
        return await self._transition(parent, event_id, "ConfirmedState")

    async def _transition(self, parent: ua.NodeId, event_id: ua.Variant, state: str) -> Any:
        condition = self._condition_at(parent)
        if condition is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
        event = condition.gen.event
        if event_id.Value != event.EventId.Value:
            return ua.StatusCode(ua.StatusCodes.BadEventIdUnknown)
        if state == "ConfirmedState" and not getattr(event, "AckedState/Id"):
            return ua.StatusCode(ua.StatusCodes.BadConditionBranchAlreadyConfirmed)
        if getattr(event, f"{state}/Id"):
            already = "Acked" if state == "AckedState" else "Confirmed"
            return ua.StatusCode(getattr(ua.StatusCodes, f"BadConditionBranchAlready{already}"))
        self.calls.append((state.removesuffix("State"), [parent.to_string()]))
        setattr(event, f"{state}/Id", True)
        setattr(
            event, state, ua.LocalizedText("Acknowledged" if state == "AckedState" else "Confirmed")
        )
        await self._emit(condition)
        return ua.StatusCode(ua.StatusCodes.Good)

    async def raise_alarm(self, name: str, message: str | None = None) -> None:
        """The machine raises condition ``name`` (unacknowledged, unconfirmed)."""
        condition = self._alarms[name]
        event = condition.gen.event
        event.Message = ua.LocalizedText(message or condition.message)
        setattr(event, "ActiveState/Id", True)
        event.ActiveState = ua.LocalizedText("Active")
        for state in ("AckedState", "ConfirmedState"):
            setattr(event, f"{state}/Id", False)
            setattr(
                event,
                state,
                ua.LocalizedText("Unacknowledged" if state == "AckedState" else "Unconfirmed"),
            )
        await self._emit(condition)

    async def clear_alarm(self, name: str) -> None:
        """The condition returns to normal (it stays retained until acknowledged)."""
        condition = self._alarms[name]
        event = condition.gen.event
        setattr(event, "ActiveState/Id", False)
        event.ActiveState = ua.LocalizedText("Inactive")
        event.Message = ua.LocalizedText(f"{condition.message}: back to normal")
        await self._emit(condition)

    async def reset(self) -> None:
        """Back to the state after ``start()`` for the commands' sake (tests sharing one
        simulator): set-points at their first values, no calls recorded, job ids from 1, every
        condition inactive, acknowledged and confirmed (so no longer retained)."""
        self.calls.clear()
        self.call_delay = 0.0
        self._next_job = 0
        for point in SETPOINTS:
            await self.set_value(point.path, point.value)
        for condition in self._alarms.values():
            event = condition.gen.event
            setattr(event, "ActiveState/Id", False)
            setattr(event, "AckedState/Id", True)
            setattr(event, "ConfirmedState/Id", True)
            await self._emit(condition)

    def alarm_active(self, name: str) -> bool:
        return bool(getattr(self._alarms[name].gen.event, "ActiveState/Id"))

    async def _emit(self, condition: _Condition) -> None:
        event = condition.gen.event
        active = bool(getattr(event, "ActiveState/Id"))
        event.Retain = active or not getattr(event, "AckedState/Id")
        await condition.gen.trigger()

    async def _alarm_schedule(self, period: float) -> None:
        """SpindleOverTemp raised and cleared in turn, every ``period`` seconds."""
        while True:
            await asyncio.sleep(period)
            if self.alarm_active("SpindleOverTemp"):
                await self.clear_alarm("SpindleOverTemp")
            else:
                await self.raise_alarm("SpindleOverTemp")

    async def _run(self, interval: float) -> None:
        """The machine at work: the spindle hunts around its speed, parts come off, the
        vibration waveform is sampled."""
        step = 0
        rng = random.Random(7)
        while True:
            await asyncio.sleep(interval)
            step += 1
            speed = 1200.0 + 30.0 * math.sin(step / 20) + rng.uniform(-2, 2)
            await self.set_value("Spindle/Speed", round(speed, 1))
            await self.set_value("Spindle/Load", round(40 + 10 * math.sin(step / 15), 1))
            await self.set_value("Spindle/Temperature", round(35 + step * 0.01, 2))
            wave = [
                round(
                    2.0 * math.sin(2 * math.pi * 5 * i / WAVE_POINTS + step) + rng.gauss(0, 0.1), 3
                )
                for i in range(WAVE_POINTS)
            ]
            await self.set_value("Spindle/Vibration", wave)
            if step % 50 == 0:
                parts = await self.value("PartCount")
                await self.set_value("PartCount", parts + 1)
                await self.set_value("CycleEnd", datetime.now(UTC))


#: The alarm source's conditions: name → (source under Machine, severity 1..1000, message).
ALARMS: dict[str, tuple[str, int, str]] = {
    "SpindleOverTemp": ("Spindle/Temperature", 700, "spindle temperature above 80 degC"),
    "DoorOpen": ("", 300, "operator door open during cycle"),
}


@dataclass
class _Condition:
    """One condition's event generator (its event object is the condition's state) and text."""

    gen: Any
    message: str


def _argument(name: str, vtype: ua.VariantType) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = ua.NodeId(vtype.value)
    arg.ValueRank = -1
    arg.Description = ua.LocalizedText(name)
    return arg


async def _add_unit(node: Any, node_id: str, unit: str, ns: int) -> None:
    """An EngineeringUnits property (EUInformation), as AnalogItems carry it."""
    eu = ua.EUInformation()
    eu.NamespaceUri = "http://www.opcfoundation.org/UA/units/un/cefact"
    eu.UnitId = -1
    eu.DisplayName = ua.LocalizedText(unit)
    eu.Description = ua.LocalizedText(unit)
    await node.add_property(
        ua.NodeId(node_id, ns),
        ua.QualifiedName("EngineeringUnits", 0),
        ua.Variant(eu, ua.VariantType.ExtensionObject),
    )


async def _serve(args: argparse.Namespace) -> None:
    cert = ServerCert(Path(args.cert), Path(args.key)) if args.cert else None
    users = dict(u.split(":", 1) for u in args.user) if args.user else None
    policy_certs = {}
    for text in args.policy_cert:
        policy, cert_file, key_file = text.split(":", 2)
        policy_certs[policy] = ServerCert(Path(cert_file), Path(key_file))
    sim = CncSimulator(
        port=args.port,
        host=args.host,
        cert=cert,
        users=users,
        trusted=[Path(p) for p in args.trust],
        policies=args.policy,
        policy_certs=policy_certs,
        tokens=args.token,
        alarm_period=args.alarm_period or None,
    )
    await sim.start()
    print(f"CNC lathe simulator on {sim.endpoint} (namespace {NAMESPACE})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--cert", help="server certificate (enables the secure policies)")
    parser.add_argument("--key", help="server private key")
    parser.add_argument("--trust", action="append", default=[], help="client certificate to trust")
    parser.add_argument("--user", action="append", help="NAME:PASSWORD (disables anonymous)")
    parser.add_argument(
        "--policy",
        action="append",
        choices=[t.name for t in ua.SecurityPolicyType],
        help="offer this endpoint (repeat; default NoSecurity, plus the modern ones with --cert)",
    )
    parser.add_argument(
        "--policy-cert",
        action="append",
        default=[],
        metavar="POLICY:CERT:KEY",
        help="a certificate of its own for one policy, e.g. Aes256_Sha256_RsaPss:b.der:b.pem",
    )
    parser.add_argument(
        "--token",
        action="append",
        choices=sorted(TOKENS),
        help="user tokens accepted (repeat; default anonymous, or username with --user)",
    )
    parser.add_argument(
        "--alarm-period",
        type=float,
        default=30.0,
        help="seconds between SpindleOverTemp raising and clearing (0: never)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
