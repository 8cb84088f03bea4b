"""RabbitMQ as a real part: a cluster of N nodes on free loopback ports, its users and ACL.

Used by ``hems lab --broker rabbitmq``, bench/cluster.py and the tests marked ``rabbitmq``
(docs/scaling.md, "A cluster: RabbitMQ").  Every node is a ``rabbitmq-server`` process of the
Debian package (3.10) run as the current user, with its own node name, AMQP / MQTT /
distribution ports, data, log and config in one directory; the nodes share an Erlang cookie and
a private ``epmd`` on a free port (started here, stopped here: nothing is left running, and the
system's RabbitMQ, if any, is not touched).  Node 1 is started first; nodes 2..N join it
(``rabbitmqctl join_cluster``).  Every node runs the MQTT plugin (MQTT 3.1.1) with
``mqtt.durable_queue_type = quorum``: an MQTT persistent session survives the loss of the node it
was on.

Users, permissions and topic permissions come from the mosquitto ACL of backend/common/broker.py
(``acl_text``: one policy, two brokers): ``definitions`` turns it into RabbitMQ definitions
(vhost ``hems``, a user per identity, per-user resource permissions that bind an identity's MQTT
subscription queues to its own client id, and topic permissions on ``amq.topic`` where MQTT's
``a/b/c`` is the routing key ``a.b.c``), loaded by node 1 at boot.  The services' intake queues
(quorum queues bound to ``amq.topic``; ``intake_queues``) are declared by their readers
(backend/common/amqp_intake.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from backend.common.broker import (
    COORDINATOR_USER,
    acl_text,
    free_port,
    wait_port,
    with_connection_users,
)
from backend.common.children import tied
from hemsfw import protocol

__all__ = ["VHOST", "RabbitCluster", "RabbitNode", "available", "definitions", "intake_queues",
           "mqtt_filter_regex", "routing_key", "why_unavailable"]

SBIN = Path("/usr/lib/rabbitmq/bin")
VHOST = "hems"
#: the MQTT plugin's exchange: MQTT topics are its routing keys
EXCHANGE = "amq.topic"


def why_unavailable() -> str | None:
    """None when RabbitMQ can be started here, else why not (a test's skip reason)."""
    if not (SBIN / "rabbitmq-server").exists():
        return "RabbitMQ is not installed (./run test installs it; or apt-get install " \
               "rabbitmq-server)"
    if shutil.which("epmd") is None:
        return "epmd (Erlang) not found"
    try:
        import aio_pika  # noqa: F401
    except ImportError:
        return "aio-pika is not installed (pip install -e '.[rabbitmq]')"
    return None


def available() -> bool:
    return why_unavailable() is None


def routing_key(topic: str) -> str:
    """MQTT topic (name or filter) -> AMQP routing key (pattern), as the MQTT plugin maps it:
    ``/`` and ``.`` swap, ``+`` is ``*``, ``#`` stays."""
    out = topic.translate(str.maketrans("/.", "./"))
    return ".".join("*" if lv == "+" else lv for lv in out.split("."))


def mqtt_filter_regex(flt: str, user: str) -> str:
    """A mosquitto ACL topic (``+``, ``#``, ``%u``) -> the regex RabbitMQ's topic permissions
    match against a routing key (publish) or a subscription's binding key (read: a
    subscription to ``a/+`` is checked as ``a.*``, which ``[^.]+`` covers)."""
    parts = []
    for lv in flt.split("/"):
        if lv == "+":
            parts.append(r"[^.]+")
        elif lv == "#":
            parts.append(r".*")
        else:
            parts.append(re.escape(lv.replace("%u", user).replace(".", "/")))
    return r"\.".join(parts)


@dataclass(frozen=True)
class _Rule:
    user: str | None  # None: a pattern line (every home)
    access: str  # read | write | readwrite
    topic: str


def _rules(acl: str) -> list[_Rule]:
    rules: list[_Rule] = []
    user: str | None = None
    for line in acl.splitlines():
        w = line.split()
        if not w or w[0].startswith("#"):
            continue
        if w[0] == "user":
            user = w[1]
        elif w[0] == "pattern":
            rules.append(_Rule(None, w[1], w[2]))
        elif w[0] == "topic":
            if user is None:
                raise ValueError(f"ACL: topic line before any user: {line!r}")
            rules.append(_Rule(user, w[1], w[2]))
        else:
            raise ValueError(f"ACL: cannot translate {line!r}")
    return rules


def intake_queues(mask_brokers: list[str]) -> dict[str, tuple[str, str]]:
    """The services' bulk intake queues: queue -> (service, MQTT topic filter).  The
    coordinator's ingest connections (``coordinator-ingest``, ``-ingest-w<i>``) share one queue
    (competing consumers); each mask broker has its own."""
    q = {f"hems.{COORDINATOR_USER}.plan": (COORDINATOR_USER, protocol.t_plan("+"))}
    for b in mask_brokers:
        q[f"hems.{b}.mask"] = (b, f"{protocol.PREFIX}/mask/{b}/+")
    return q


def _alt(regexes: list[str]) -> str:
    return "^(?:" + "|".join(regexes) + ")$" if regexes else "^$"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(users: dict[str, str], mask_brokers: list[str],
                recorder: bool = False, extra_acl: str = "") -> dict[str, object]:
    """RabbitMQ definitions equivalent to ``acl_text(mask_brokers)`` for ``users`` (identity ->
    password; every name not a service identity is a home).  ``extra_acl``: more mosquitto
    ACL lines (the benchmarks' TEST-ONLY fleet identity, backend/common/fleet_acl.py)."""
    everyone = with_connection_users(users, mask_brokers, recorder=recorder)
    rules = _rules(acl_text(mask_brokers, recorder=recorder) + extra_acl)
    queues = intake_queues(mask_brokers)
    out_users, perms, topic_perms = [], [], []
    for u, pw in everyone.items():
        out_users.append({"name": u, "password_hash": password_hash(pw),
                          "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""})
        # mosquitto applies pattern lines to every user, services included
        mine = [r for r in rules if r.user == u or r.user is None]
        read = [mqtt_filter_regex(r.topic, u) for r in mine if "read" in r.access]
        write = [mqtt_filter_regex(r.topic, u) for r in mine if "write" in r.access]
        # An identity's MQTT subscriptions live in queues named after its client id, which
        # must be its user name (as mosquitto's use_username_as_clientid makes it).
        own = rf"mqtt-subscription-{re.escape(u)}qos[01]"
        consume = [re.escape(q) for q, (svc, _) in queues.items()
                   if u == f"{svc}-ingest" or u.startswith(f"{svc}-ingest-w")]
        # an intake reader declares and binds its queue itself (once the cluster is formed:
        # a quorum queue's members are the nodes at its declaration)
        perms.append({"user": u, "vhost": VHOST, "configure": _alt([own, *consume]),
                      "write": _alt([own, re.escape(EXCHANGE), *consume]),
                      "read": _alt([own, re.escape(EXCHANGE), *consume])})
        topic_perms.append({"user": u, "vhost": VHOST, "exchange": EXCHANGE,
                            "write": _alt(write), "read": _alt(read)})
    return {
        "users": out_users,
        "vhosts": [{"name": VHOST}],
        "permissions": perms,
        "topic_permissions": topic_perms,
    }


_CONF = """\
listeners.tcp.1 = 127.0.0.1:{amqp}
mqtt.listeners.tcp.1 = 127.0.0.1:{mqtt}
mqtt.allow_anonymous = false
mqtt.vhost = {vhost}
mqtt.exchange = amq.topic
mqtt.durable_queue_type = quorum
loopback_users = none
log.console = false
log.file.level = warning
disk_free_limit.absolute = 10MB
"""


@dataclass
class RabbitNode:
    index: int
    name: str
    amqp_port: int
    mqtt_port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class RabbitCluster:
    """N RabbitMQ nodes clustered on loopback, configured from the hems ACL (module docstring).
    ``start()`` / ``stop()`` or a context manager; ``stop_node(i)`` / ``start_node(i)`` take one
    node down and back.  Stops every node on SIGTERM / SIGINT / SIGHUP while ``start()`` runs
    (afterwards the owner's own handlers do; every node is also tied to this process)."""

    base: Path
    users: dict[str, str]
    mask_brokers: list[str]
    nodes_n: int = 3
    recorder: bool = False
    extra_acl: str = ""
    tag: str = field(default_factory=lambda: f"hems{os.getpid()}")
    nodes: list[RabbitNode] = field(init=False)
    epmd_port: int = field(init=False)
    _epmd: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if not 1 <= self.nodes_n <= 9:
            raise ValueError("nodes must be 1..9")
        self.base.mkdir(parents=True, exist_ok=True)
        self.epmd_port = free_port()
        self.nodes = []
        for i in range(1, self.nodes_n + 1):
            self.nodes.append(RabbitNode(i, f"{self.tag}-{i}@localhost", free_port(),
                                         free_port(), free_port()))

    # ------------------------------------------------------------ environment

    def _env(self, node: RabbitNode) -> dict[str, str]:
        d = self.base / f"n{node.index}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update({
            "HOME": str(self.base),  # .erlang.cookie, shared by the nodes and the CLI
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            # the script then execs erl (our child is the VM itself: SIGKILL reaches it) and
            # -noinput keeps the Erlang shell off; SIGTERM is a clean shutdown
            "RABBITMQ_ALLOW_INPUT": "1",
            "RABBITMQ_SERVER_START_ARGS": "-noinput",
        })
        return env

    def ctl(self, node: RabbitNode, *args: str, timeout: float = 120.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <node> args...`` (CalledProcessError with its output if it fails)."""
        r = subprocess.run([str(SBIN / "rabbitmqctl"), "-n", node.name, *args],
                           env=self._env(node), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: "
                               f"{(r.stderr or r.stdout).strip()[-1500:]}")
        return r

    # ------------------------------------------------------------ lifecycle

    def _write(self, node: RabbitNode) -> None:
        d = self.base / f"n{node.index}"
        (d / "log").mkdir(parents=True, exist_ok=True)
        (d / "advanced.config").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        conf = _CONF.format(amqp=node.amqp_port, mqtt=node.mqtt_port, vhost=VHOST)
        if node.index == 1:
            conf += f"load_definitions = {self.base / 'definitions.json'}\n"
        else:
            conf += ("cluster_formation.peer_discovery_backend = classic_config\n"
                     f"cluster_formation.classic_config.nodes.1 = {self.nodes[0].name}\n")
        (d / "rabbitmq.conf").write_text(conf)

    def start_node(self, i: int, wait: bool = True) -> RabbitNode:
        """Start node ``i`` (1-based); ``wait``: until it runs (its MQTT port listens, which
        it opens at the end of its boot).  A node that was in the cluster rejoins it."""
        node = self.nodes[i - 1]
        if node.proc is not None and node.proc.poll() is None:
            return node
        self._write(node)
        log = open(self.base / f"n{node.index}" / "stdout.log", "ab")  # noqa: SIM115
        with log:
            node.proc = subprocess.Popen([str(SBIN / "rabbitmq-server")], env=self._env(node),
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=tied())
        if wait:
            self.wait_node(i)
        return node

    def wait_node(self, i: int, timeout: float = 300.0) -> None:
        node = self.nodes[i - 1]
        try:
            wait_port(node.mqtt_port, timeout)
        except BaseException:
            self.stop_node(i, kill=True)
            raise

    def stop_node(self, i: int, kill: bool = False) -> None:
        """Stop node ``i``: SIGTERM (a clean shutdown) or, ``kill``, SIGKILL."""
        node = self.nodes[i - 1]
        p, node.proc = node.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def start(self) -> RabbitCluster:
        """Node 1 (it loads the users and permissions at boot), then the others in parallel
        (they join node 1 at boot: classic peer discovery); returns once every node runs and
        is in the cluster.  No rabbitmqctl call but the last check: the CLI costs seconds."""
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}

        def on_signal(signum: int, _f: FrameType | None) -> None:
            self.stop()
            raise SystemExit(128 + signum)

        for s in old:
            signal.signal(s, on_signal)
        try:
            cookie = self.base / ".erlang.cookie"
            if not cookie.exists():
                cookie.write_text(base64.b32encode(os.urandom(20)).decode())
                cookie.chmod(0o400)
            self.write_definitions()
            epmd = shutil.which("epmd") or "epmd"
            self._epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          preexec_fn=tied())
            wait_port(self.epmd_port)
            self.start_node(1)
            for node in self.nodes[1:]:
                self.start_node(node.index, wait=False)
            for node in self.nodes[1:]:
                self.wait_node(node.index)
            if self.nodes_n > 1:
                self.wait_cluster()
        except BaseException:
            self.stop()
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self

    def wait_cluster(self, timeout: float = 120.0) -> None:
        """Until every node is a running member (RuntimeError after ``timeout``)."""
        end = time.monotonic() + timeout
        want = {n.name for n in self.nodes}
        running: set[str] = set()
        while time.monotonic() < end:
            r = self.ctl(self.nodes[0], "cluster_status", "--formatter", "json", check=False)
            with contextlib.suppress(ValueError):
                running = set(json.loads(r.stdout).get("running_nodes", []))
            if running >= want:
                return
            time.sleep(1.0)
        raise RuntimeError(f"RabbitMQ cluster not formed: running {sorted(running)}, "
                           f"want {sorted(want)}")

    def write_definitions(self) -> Path:
        path = self.base / "definitions.json"
        path.write_text(json.dumps(definitions(self.users, self.mask_brokers, self.recorder,
                                               self.extra_acl)))
        path.chmod(0o600)
        return path

    def add_users(self, users: dict[str, str]) -> None:
        """More identities (homes) in a running cluster: one import."""
        self.users = {**self.users, **users}
        self.ctl(self.running()[0], "import_definitions", str(self.write_definitions()))

    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node.index)
        if self._epmd is not None:
            p, self._epmd = self._epmd, None
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def amqp_urls(self, user: str, password: str) -> list[str]:
        return [f"amqp://{user}:{password}@127.0.0.1:{n.amqp_port}/{VHOST}" for n in self.nodes]

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


