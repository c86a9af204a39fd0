"""What an OPC UA server offers (its endpoints) and which of it the agent can use.

GetEndpoints needs no session and no security: a server answers it before it trusts anybody,
which makes it the commissioning engineer's first question and the agent's way to explain a
refused connection. Each endpoint is a security policy, a message security mode, the user
tokens it accepts and the server certificate a client must encrypt for. A server may hold one
certificate per policy (an older SHA-1 one beside an SHA-256 one), so "the server's certificate"
is always the one of the endpoint with the policy and mode the client uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, ua
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

#: Policies the agent can open a secure channel with, by the name the config uses.
POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "None": security_policies.SecurityPolicyNone,
    "Basic128Rsa15": security_policies.SecurityPolicyBasic128Rsa15,
    "Basic256": security_policies.SecurityPolicyBasic256,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}

#: Policies the OPC UA specification deprecated (SHA-1 signatures, RSA PKCS#1 v1.5): refused
#: unless the config says ``allow_deprecated: true``.
DEPRECATED = frozenset({"Basic128Rsa15", "Basic256"})

#: Weakest to strongest (the order the OPC Foundation's stacks rank them in); a mode counts
#: before a policy, and a deprecated policy after every current one.
_POLICY_RANK = ["None", "Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128_Sha256_RsaOaep"]
_POLICY_RANK.append("Aes256_Sha256_RsaPss")
_MODE_RANK = {"None": 0, "Sign": 1, "SignAndEncrypt": 2}

#: User tokens the agent can present: none (anonymous) or a user name with a password.
USABLE_TOKENS = ("Anonymous", "UserName")

BINARY_TRANSPORT = "http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary"

_TOKEN_NAMES = {
    ua.UserTokenType.Anonymous: "Anonymous",
    ua.UserTokenType.UserName: "UserName",
    ua.UserTokenType.Certificate: "Certificate",
    ua.UserTokenType.IssuedToken: "IssuedToken",
}


def mode_name(mode: ua.MessageSecurityMode) -> str:
    """``Sign``, ``SignAndEncrypt`` or ``None`` (asyncua spells the last ``None_``)."""
    return "None" if mode == ua.MessageSecurityMode.None_ else str(mode.name)


def policy_name(uri: str) -> str:
    """The config's name of a policy URI (its fragment: ``...#Basic256Sha256``)."""
    return uri.rpartition("#")[2] or uri


def first_certificate(der: bytes) -> bytes:
    """The server's own certificate when it sends its chain (DER certificates one after the
    other): the first DER element, measured by its length header."""
    if len(der) < 2 or der[0] != 0x30:
        return der
    size = der[1]
    if size < 0x80:
        return der[: 2 + size]
    count = size & 0x7F
    if len(der) < 2 + count:
        return der
    return der[: 2 + count + int.from_bytes(der[2 : 2 + count], "big")]


def thumbprint(der: bytes) -> str:
    """SHA-1 of the certificate, ``3A:7F:...``: what server HMIs and UaExpert display."""
    cert = x509.load_der_x509_certificate(first_certificate(der))
    return cert.fingerprint(hashes.SHA1()).hex(":").upper()


@dataclass(frozen=True)
class ServerCertificate:
    """One certificate a server presents, as an integrator compares it with the machine's."""

    der: bytes
    subject: str
    sha1: str
    sha256: str
    not_before: datetime
    not_after: datetime
    application_uri: str | None

    @classmethod
    def parse(cls, der: bytes) -> ServerCertificate | None:
        """None for bytes that are no certificate (a server's bug; listed as missing)."""
        own = first_certificate(der)
        try:
            cert = x509.load_der_x509_certificate(own)
        except ValueError:
            return None
        uri: str | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
            uri = uris[0] if uris else None
        return cls(
            der=cert.public_bytes(serialization.Encoding.DER),
            subject=cert.subject.rfc4514_string(),
            sha1=cert.fingerprint(hashes.SHA1()).hex(":").upper(),
            sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            application_uri=uri,
        )

    def validity(self, now: datetime | None = None) -> str:
        """``valid 2026-11-23 to 2028-02-26``, with ``EXPIRED`` or ``NOT YET VALID`` when the
        clock (the gateway's) is outside that span."""
        now = now or datetime.now(UTC)
        span = f"valid {self.not_before:%Y-%m-%d} to {self.not_after:%Y-%m-%d}"
        if now > self.not_after:
            return f"{span}, EXPIRED"
        if now < self.not_before:
            return f"{span}, NOT YET VALID"
        return span

    def as_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "sha1": self.sha1,
            "sha256": self.sha256,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "application_uri": self.application_uri,
        }


@dataclass(frozen=True)
class Offer:
    """One endpoint the server offers, and whether the agent can use it (``refusal`` says why
    not)."""

    url: str
    policy: str
    policy_uri: str
    mode: str
    tokens: tuple[str, ...]
    level: int
    cert: ServerCertificate | None
    refusal: str | None

    @property
    def supported(self) -> bool:
        return self.refusal is None

    @property
    def deprecated(self) -> bool:
        return self.policy in DEPRECATED

    def accepts(self, token: str) -> bool:
        return token in self.tokens

    def strength(self) -> tuple[int, int, int, int]:
        """Sort key, strongest last: current before deprecated, then mode, policy, and the
        server's own SecurityLevel."""
        rank = _POLICY_RANK.index(self.policy) if self.policy in _POLICY_RANK else -1
        return (not self.deprecated, _MODE_RANK.get(self.mode, -1), rank, self.level)

    def security(self) -> dict[str, Any]:
        """The ``security:`` keys that select this endpoint (files aside)."""
        if self.policy == "None":
            return {"policy": "None"}
        keys: dict[str, Any] = {"policy": self.policy, "mode": self.mode}
        if self.deprecated:
            keys["allow_deprecated"] = True
        return keys

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "policy": self.policy,
            "policy_uri": self.policy_uri,
            "mode": self.mode,
            "user_tokens": list(self.tokens),
            "security_level": self.level,
            "server_certificate": self.cert.as_json() if self.cert is not None else None,
            "supported": self.supported,
            "refusal": self.refusal,
        }


def _refusal(
    ep: ua.EndpointDescription,
    policy: str,
    mode: str,
    tokens: Sequence[str],
    cert: ServerCertificate | None,
    allow_deprecated: bool,
) -> str | None:
    if not (ep.EndpointUrl or "").startswith(ua.OPC_TCP_SCHEME):
        return "not opc.tcp (the agent speaks opc.tcp only)"
    transport = ep.TransportProfileUri or BINARY_TRANSPORT
    if transport != BINARY_TRANSPORT:
        return f"transport {transport.rpartition('/')[2]} is not supported"
    if policy not in POLICIES:
        return "a policy the agent does not know"
    if mode not in _MODE_RANK or (mode == "None") != (policy == "None"):
        return f"security mode {mode} with policy {policy}"
    if policy in DEPRECATED and not allow_deprecated:
        return "deprecated (SHA-1): needs allow_deprecated: true"
    if policy != "None" and cert is None:
        return "the server sends no certificate for it"
    if not any(t in USABLE_TOKENS for t in tokens):
        offered = ", ".join(tokens) or "no user token"
        return f"accepts only {offered} (the agent sends Anonymous or UserName)"
    return None


def offers(
    endpoints: Iterable[ua.EndpointDescription], *, allow_deprecated: bool = False
) -> list[Offer]:
    """Every endpoint as the agent sees it, in the server's order."""
    found = []
    for ep in endpoints:
        uri = ep.SecurityPolicyUri or ""
        policy = policy_name(uri)
        mode = mode_name(ep.SecurityMode)
        tokens = tuple(
            dict.fromkeys(
                _TOKEN_NAMES.get(t.TokenType, str(t.TokenType)) for t in ep.UserIdentityTokens or []
            )
        )
        cert = (
            ServerCertificate.parse(bytes(ep.ServerCertificate)) if ep.ServerCertificate else None
        )
        found.append(
            Offer(
                url=ep.EndpointUrl or "",
                policy=policy,
                policy_uri=uri,
                mode=mode,
                tokens=tokens,
                level=int(ep.SecurityLevel or 0),
                cert=cert,
                refusal=_refusal(ep, policy, mode, tokens, cert, allow_deprecated),
            )
        )
    return found


def strongest(found: Iterable[Offer], token: str) -> Offer | None:
    """The strongest endpoint the agent can use that accepts ``token`` (``Anonymous`` or
    ``UserName``)."""
    usable = [o for o in found if o.supported and o.accepts(token)]
    return max(usable, key=Offer.strength, default=None)


def matching(found: Iterable[Offer], policy: str, mode: str) -> list[Offer]:
    """The opc.tcp endpoints with this policy and mode (``mode`` is ignored for None)."""
    return [
        o
        for o in found
        if o.url.startswith(ua.OPC_TCP_SCHEME)
        and o.policy == policy
        and (policy == "None" or o.mode == mode)
    ]


async def get_endpoints(url: str, timeout: float) -> list[ua.EndpointDescription]:
    """GetEndpoints over a channel without security (what every server answers)."""
    probe = Client(url, timeout=timeout)
    result: list[ua.EndpointDescription] = await asyncio.wait_for(
        probe.connect_and_get_server_endpoints(), timeout=timeout * 2
    )
    return result
