"""MQTT connection settings shared by the services, the lab and the tests (aiomqtt 2.x)."""

from __future__ import annotations

import argparse
import os
import ssl
from dataclasses import dataclass, replace

import aiomqtt


@dataclass(frozen=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    #: CA certificate (PEM) to verify the broker's TLS certificate; None = plain MQTT.
    cafile: str | None = None
    client_id: str | None = None

    def with_identity(self, username: str, password: str) -> MqttSettings:
        return replace(self, username=username, password=password)

    def tls_context(self) -> ssl.SSLContext | None:
        if self.cafile is None:
            return None
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def client(self, **kw: object) -> aiomqtt.Client:
        tls = self.tls_context()
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            tls_context=tls,
            **kw,  # type: ignore[arg-type]
        )


def add_mqtt_args(p: argparse.ArgumentParser, default_user: str) -> None:
    g = p.add_argument_group("MQTT")
    g.add_argument("--host", default=os.environ.get("HEMS_MQTT_HOST", "127.0.0.1"))
    g.add_argument("--port", type=int, default=int(os.environ.get("HEMS_MQTT_PORT", "1883")))
    g.add_argument("--user", default=os.environ.get("HEMS_MQTT_USER", default_user))
    g.add_argument(
        "--password-env",
        default="HEMS_MQTT_PASSWORD",
        help="name of the environment variable holding the password (kept off the command "
        "line so it does not show in ps)",
    )
    g.add_argument("--cafile", default=os.environ.get("HEMS_MQTT_CAFILE"), help="TLS CA (PEM)")


def settings_from_args(a: argparse.Namespace) -> MqttSettings:
    return MqttSettings(
        host=a.host,
        port=a.port,
        username=a.user,
        password=os.environ.get(a.password_env),
        cafile=a.cafile,
    )
