"""Opening an asyncua client session from the config, and saying in one line why it failed.

asyncua's own reconnect supervisor is left off: the agent owns backoff (and the device status
that goes with it), and a client that reconnects behind its back would hide an outage. The
client's keepalive watchdog still runs, and reports a dead session through a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import uacrypto
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drivers.base import DeviceError
from drivers.opcua.config import OpcuaConnection
from drivers.opcua.convert import status_name
from drivers.opcua.endpoints import (
    POLICIES,
    Offer,
    first_certificate,
    get_endpoints,
    matching,
    offers,
    thumbprint,
)

#: Status codes a server answers a refused identity with, and what to tell the integrator.
_AUTH = {
    "BadUserAccessDenied": "user or password refused",
    "BadIdentityTokenRejected": "user or password refused",
    "BadIdentityTokenInvalid": "user or password refused",
    "BadCertificateUntrusted": "the server does not trust our certificate",
    "BadCertificateInvalid": "the server finds our certificate invalid",
    "BadCertificateUriInvalid": "our certificate's application URI is refused",
    "BadCertificateTimeInvalid": "a certificate is expired or not yet valid",
    "BadSecurityChecksFailed": "security checks failed (certificate not trusted?)",
    "BadSecurityPolicyRejected": "the server rejects this security policy",
    "BadTooManySessions": "the server has too many sessions",
}


class _LostConnectionNoise(logging.Filter):
    """asyncua logs a traceback at ERROR when its publish request meets a closed connection;
    the device status already says "connection lost" once, so that record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage().startswith("Publish iteration crashed")
            and isinstance(exc, ConnectionError)
        )


logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_LostConnectionNoise())
# asyncua narrates every connect step at INFO; at the agent's default level that would be a dozen
# lines per reconnect attempt. Its warnings and errors still show; a logging config that sets
# the "asyncua" level itself is left alone.
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.WARNING)


def read_password(path: Path) -> str:
    """The password file's text; one trailing newline (from an editor or ``echo``) dropped."""
    text = path.read_text(encoding="utf-8")
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def password_of(conn: OpcuaConnection) -> str | None:
    """The password from its variable or file; ``DeviceError`` naming the source (never the
    content) when it is missing."""
    if conn.password_env is not None:
        value = os.environ.get(conn.password_env)
        if not value:
            raise DeviceError(
                f"password missing: {conn.password_env} is not set",
                f"environment variable {conn.password_env} is not set or empty",
            )
        return value
    if conn.password_file is not None:
        try:
            return read_password(conn.password_file)
        except (OSError, UnicodeError) as exc:
            raise DeviceError(
                f"password missing: cannot read {conn.password_file}", str(exc)
            ) from None
    return None


def application_uri(cert: x509.Certificate) -> str | None:
    """The URI in the certificate's SAN: the client must announce the same one, or a server that
    checks (most do) refuses the session."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def make_client(conn: OpcuaConnection, password: str | None) -> Client:
    """A configured, unconnected client."""
    client = Client(conn.endpoint, timeout=conn.timeout, watchdog_intervall=conn.keepalive)
    client.name = client.description = "edge-agent"
    # A session the server keeps after we vanish would hold its resources for an hour by default.
    client.session_timeout = max(30_000, int(conn.keepalive * 10_000))
    sec = conn.security
    if sec.policy != "None":
        assert sec.cert_file and sec.key_file and sec.server_cert_file
        try:
            cert = await uacrypto.load_certificate(str(sec.cert_file))
        except Exception as exc:
            raise DeviceError("certificate unreadable", f"{sec.cert_file}: {exc}") from None
        uri = application_uri(cert)
        if uri is not None:
            client.application_uri = uri
        mode = getattr(ua.MessageSecurityMode, sec.mode)
        try:
            await client.set_security(
                POLICIES[sec.policy],
                str(sec.cert_file),
                str(sec.key_file),
                server_certificate=str(sec.server_cert_file),
                mode=mode,
            )
        except Exception as exc:
            raise DeviceError("certificate unreadable", f"{exc}") from None
    if conn.username is not None:
        client.set_user(conn.username)
        if password is not None:
            client.set_password(password)
    return client


def why(exc: BaseException, conn: OpcuaConnection) -> DeviceError:
    """One stable reason (it becomes every tag's quality and the device status) and the detail."""
    where = conn.endpoint
    if isinstance(exc, DeviceError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        name = status_name(ua.StatusCode(exc.code))
        text = _AUTH.get(name)
        if text is not None:
            return DeviceError(f"{text} ({name})", f"{where}: {name}")
        return DeviceError(name, f"{where}: {exc}")
    if isinstance(exc, UaError) and "certificate mismatch" in str(exc):
        return DeviceError(
            "server certificate is not server_cert_file",
            f"{where}: the server presented another certificate than the one trusted",
        )
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED
    ):
        return DeviceError("connection refused", f"{where}: {exc}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return DeviceError("timeout", f"{where}: no answer within {conn.timeout}s")
    if isinstance(exc, ConnectionError | EOFError):
        return DeviceError("connection lost", f"{where}: {exc!r}")
    if isinstance(exc, OSError):
        return DeviceError("unreachable", f"{where}: {exc}")
    return DeviceError(f"error: {type(exc).__name__}", f"{where}: {exc}")


async def open_session(
    conn: OpcuaConnection, on_lost: Callable[[Exception], Awaitable[None]] | None = None
) -> Client:
    """A connected client, or ``DeviceError`` with the reason."""
    client = await make_client(conn, password_of(conn))
    if on_lost is not None:
        client.connection_lost_callback = on_lost
    try:
        await asyncio.wait_for(client.connect(), timeout=conn.timeout * 2)
    except BaseException as exc:
        await close_session(client, conn.timeout)
        if isinstance(exc, asyncio.CancelledError):
            raise
        error = why(exc, conn)
        if _unexplained(exc, error):
            error = await diagnose(conn) or error
        raise error from exc
    return client


#: Refusals that may mean "not the endpoint you think", which the server's endpoints explain.
_ASK_ENDPOINTS = {
    "timeout",
    "connection lost",
    "BadSecurityPolicyRejected",
    "BadSecurityModeRejected",
    "BadIdentityTokenInvalid",
    "BadIdentityTokenRejected",
}


def _unexplained(exc: BaseException, error: DeviceError) -> bool:
    """A failure the endpoints may explain: a server that cannot decrypt our hello (encrypted
    for another certificate) or lacks the policy just hangs up; one that lacks the user token
    refuses the identity; asyncua itself finds no endpoint of our policy and mode."""
    if isinstance(exc, UaStatusCodeError):
        return status_name(ua.StatusCode(exc.code)) in _ASK_ENDPOINTS
    if isinstance(exc, UaError) and "No matching endpoints" in str(exc):
        return True
    return error.reason in _ASK_ENDPOINTS


async def diagnose(conn: OpcuaConnection) -> DeviceError | None:
    """Why the configured endpoint cannot work, from what the server offers (``explain``).
    None when it should work, or when the server cannot be asked (the first error stands)."""
    try:
        found = offers(await get_endpoints(conn.endpoint, conn.timeout), allow_deprecated=True)
        pinned = await asyncio.to_thread(pinned_der, conn)
    except Exception:
        return None
    return explain(conn, found, pinned)


def pinned_der(conn: OpcuaConnection) -> bytes | None:
    """``server_cert_file`` as DER (it may be PEM), None without security."""
    path = conn.security.server_cert_file
    if conn.security.policy == "None" or path is None:
        return None
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(data)
    else:
        cert = x509.load_der_x509_certificate(first_certificate(data))
    return cert.public_bytes(serialization.Encoding.DER)


def explain(
    conn: OpcuaConnection, found: Sequence[Offer], pinned: bytes | None
) -> DeviceError | None:
    """What in the server's endpoints keeps this connection from working: no endpoint with its
    policy and mode, another certificate on that endpoint than ``server_cert_file`` (``pinned``),
    or no user token of our kind. None when the endpoints allow it."""
    sec = conn.security
    where = conn.endpoint
    listed = ", ".join(sorted({f"{o.policy} {o.mode}" for o in found})) or "nothing"
    chosen = matching(found, sec.policy, sec.mode)
    if not chosen:
        what = (
            "no endpoint without security"
            if sec.policy == "None"
            else f"no {sec.policy} {sec.mode} endpoint"
        )
        return DeviceError(f"the server offers {what}", f"{where}: it offers {listed}")
    if pinned is not None:
        certs = {o.cert.der: o.cert for o in chosen if o.cert is not None}
        if certs and pinned not in certs:
            theirs = ", ".join(c.sha1 for c in certs.values())
            return DeviceError(
                "server certificate is not server_cert_file",
                f"{where}: its {sec.policy} {sec.mode} endpoint presents SHA-1 {theirs}, "
                f"{sec.server_cert_file} is SHA-1 {thumbprint(pinned)}",
            )
    token = "UserName" if conn.username is not None else "Anonymous"
    if not any(o.accepts(token) for o in chosen):
        accepted = ", ".join(dict.fromkeys(t for o in chosen for t in o.tokens)) or "none"
        if token == "Anonymous":
            return DeviceError(
                "the server refuses anonymous sessions: set username",
                f"{where}: the endpoint accepts {accepted}",
            )
        return DeviceError(
            "the server accepts no user name on this endpoint",
            f"{where}: the endpoint accepts {accepted}",
        )
    return None


async def close_session(client: Client, timeout: float) -> None:
    """Close politely when the server is there, never wait long when it is not; never raise."""
    connected = client.uaclient.state is UaClientState.CONNECTED
    client.uaclient.request_disconnect()
    if connected:  # else asyncua logs a warning per attempt about closing a closed channel
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), timeout=min(timeout, 2.0))
    with contextlib.suppress(Exception):
        client.disconnect_socket()
    session = getattr(client.uaclient, "session", None)
    publisher = getattr(session, "_publish_task", None)
    # On a lost connection asyncua's publish loop would retry every second for ever.
    tasks = (client._supervisor_task, client._stale_watchdog_task, client._renew_channel_task)
    for task in (*tasks, publisher):
        if task is not None and not task.done():
            task.cancel()
