"""Local brokers shaped like AWS IoT Core and Azure IoT Hub, and the platform's side of them."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

from tests.brokers import Mosquitto, Subscriber, platform_broker
from tests.certs import make_pki


def aws_broker(workdir: Path, prefix: str) -> tuple[Mosquitto, Path]:
    """Mutual TLS only; the client certificate's CN ("client", the thing) is the identity and
    its policy allows publishing under ``prefix`` and reading its command topics, nothing else
    (the "platform" reads through the same policy, for the test)."""
    pki = make_pki(workdir / "pki")
    acl = f"user client\ntopic write {prefix}/#\ntopic read {prefix}/#\n"
    (workdir / "acl").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "acl").write_text(acl)
    conf = (
        f"cafile {pki}/ca.pem\ncertfile {pki}/server.pem\nkeyfile {pki}/server.key\n"
        "require_certificate true\nuse_identity_as_username true\n"
        f"acl_file {workdir / 'acl'}\nlog_type all\n"
    )
    return Mosquitto(workdir, extra_conf=conf, anonymous=False), pki


class TlsSubscriber(Subscriber):
    """The platform side over mutual TLS (the subscriber of tests.brokers, with a certificate)."""

    pki: Path | None = None

    def with_tls(self, pki: Path) -> TlsSubscriber:
        self._client.tls_set(
            ca_certs=str(pki / "ca.pem"),
            certfile=str(pki / "client.pem"),
            keyfile=str(pki / "client.key"),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        return self


AZURE_HUB = "contoso.azure-devices.net"
AZURE_DEVICE = "MyDevice01"


def azure_broker(workdir: Path, username: str, password: str) -> Mosquitto:
    """IoT Hub's topics for one device: events out, direct methods in and their responses."""
    acl = (
        f"user {username}\n"
        f"topic write devices/{AZURE_DEVICE}/messages/events/#\n"
        "topic read $iothub/methods/POST/#\n"
        "topic write $iothub/methods/res/#\n"
        "\nuser hub\ntopic readwrite #\ntopic readwrite $iothub/#\n"
    )
    return platform_broker(workdir, {username: password, "hub": "hub-secret"}, acl)


class IotHubResponder(Subscriber):
    """Plays IoT Hub: receives events and method responses, invokes direct methods."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._client.username_pw_set("hub", "hub-secret")

    def invoke(self, method: str, rid: str, body: Any) -> None:
        self._client.publish(f"$iothub/methods/POST/{method}/?$rid={rid}", json.dumps(body), qos=1)
