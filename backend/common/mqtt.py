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
    #: "mosquitto" (one broker, MQTT 5 $share for the services' bulk intake) or "rabbitmq" (a
    #: cluster: the bulk intake over AMQP, backend/common/transport.py)
    broker: str = "mosquitto"
    #: RabbitMQ: every node's AMQP port on ``host`` (the intake fails over between them)
    amqp_ports: tuple[int, ...] = ()
    #: RabbitMQ: the virtual host
    vhost: str = "hems"
    #: RabbitMQ: every node's MQTT port on ``host`` (retained messages are node-local there:
    #: backend/common/retained.py copies the services' retained messages to every node)
    mqtt_ports: tuple[int, ...] = ()

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


def failover(settings: MqttSettings, attempt: int) -> MqttSettings:
    """The node to try on connection ``attempt`` (0, 1, ...): ``settings.port`` first, then
    the cluster's other nodes (``mqtt_ports``) in turn; unchanged without a cluster."""
    others = [p for p in settings.mqtt_ports if p != settings.port]
    if not others:
        return settings
    ports = [settings.port, *others]
    return replace(settings, port=ports[attempt % len(ports)])


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
    g.add_argument("--broker", choices=["mosquitto", "rabbitmq"],
                   default=os.environ.get("HEMS_BROKER", "mosquitto"),
                   help="the broker's kind: rabbitmq takes the bulk intake over AMQP")
    g.add_argument("--amqp-ports", type=_ports, default=os.environ.get("HEMS_AMQP_PORTS", ""),
                   help="rabbitmq: the cluster nodes' AMQP ports on --host, comma-separated")
    g.add_argument("--mqtt-ports", type=_ports, default=os.environ.get("HEMS_MQTT_PORTS", ""),
                   help="rabbitmq: every node's MQTT port on --host, comma-separated (retained "
                   "messages are copied to each)")


def mqtt_args_problem(a: argparse.Namespace) -> str | None:
    """What is wrong with the MQTT arguments taken together (a usage error), or None."""
    if a.broker == "rabbitmq" and not a.amqp_ports:
        return "--broker rabbitmq needs --amqp-ports (the cluster nodes' AMQP ports)"
    if a.broker != "rabbitmq" and (a.amqp_ports or a.mqtt_ports):
        return "--amqp-ports and --mqtt-ports need --broker rabbitmq"
    return None


def _ports(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of ports: {text!r}") from None
    if any(not 0 < p < 65536 for p in out):
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return out


def settings_from_args(a: argparse.Namespace) -> MqttSettings:
    return MqttSettings(
        host=a.host,
        port=a.port,
        username=a.user,
        password=os.environ.get(a.password_env),
        cafile=a.cafile,
        broker=a.broker,
        amqp_ports=_ports(a.amqp_ports) if isinstance(a.amqp_ports, str) else a.amqp_ports,
        mqtt_ports=_ports(a.mqtt_ports) if isinstance(a.mqtt_ports, str) else a.mqtt_ports,
    )
