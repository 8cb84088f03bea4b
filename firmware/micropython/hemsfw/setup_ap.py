# Wi-Fi set-up without a PC (ESP32 / Pico W): a board whose config has an empty wifi.ssid opens
# its own access point "hems-<home id>" and serves one small page at http://192.168.4.1/ to
# enter the Wi-Fi network and the broker; saved into config.json like the rest of the config
# (checked by hemsfw/config.py, written atomically by hemsfw/store.py), then the board resets
# and joins that network.  The relay stays in its safe state meanwhile (the board made it so).
# The access point is open unless wifi.ap_password (8-63 characters) is set: until the
# resident has saved the page, anyone in Wi-Fi range could.  MicroPython subset only.

try:
    import asyncio
except ImportError:   # very old ports
    import uasyncio as asyncio  # type: ignore[import-not-found, no-redef]

from hemsfw.webreq import form_fields

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Callable
    from typing import Any

    from hemsfw.interfaces import Json, Log

PORT = 80


def wanted(cfg: "Json") -> bool:
    """The config asks for Wi-Fi set-up over the access point (an empty wifi.ssid)."""
    w = cfg.get("wifi") or {}
    return bool(w) and not w.get("ssid")


def apply(cfg: "Json", form: "dict[str, str]") -> "tuple[Json | None, str | None]":
    """(the config with the form's Wi-Fi and broker, None) or (None, why not).  The result is
    what hemsfw.config.check accepts; cfg itself is not changed."""
    import json

    from hemsfw import config

    ssid = form.get("ssid", "").strip()
    pw = form.get("password", "")
    host = form.get("host", "").strip()
    if not 1 <= len(ssid) <= 32:
        return None, "the network name needs 1 to 32 characters"
    if pw and not 8 <= len(pw) <= 63:
        return None, "a Wi-Fi password has 8 to 63 characters (or none, for an open network)"
    if not host:
        return None, "the broker's address is needed"
    try:
        port = int(form.get("port") or "1883")
    except ValueError:
        return None, "the broker's port is a number"
    new = json.loads(json.dumps(cfg))   # a deep copy
    new["wifi"]["ssid"] = ssid
    new["wifi"]["password"] = pw
    new["mqtt"]["host"] = host
    new["mqtt"]["port"] = port
    # the broker typed in replaces a checked config's broker list (mqtt.hosts, which
    # config.check fills in from host and port): one broker, the one the resident gave
    new["mqtt"].pop("hosts", None)
    try:
        config.check(new)
    except config.ConfigError as e:
        return None, str(e)
    return new, None


def page(cfg: "Json", msg: str = "") -> str:
    m = cfg["mqtt"]
    return ('<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" '
            'content="width=device-width"><title>HEMS set-up</title></head><body style='
            '"font-family:sans-serif"><h1>Set up %s</h1>%s<form method="post" action="/save">'
            '<p>Wi-Fi network <input name="ssid" required maxlength="32"></p><p>Wi-Fi password '
            '<input name="password" type="password" maxlength="63"></p><p>Broker address '
            '<input name="host" value="%s" required> port <input name="port" value="%d" '
            'size="5"></p><p><button>Save and restart</button></p></form></body></html>'
            % (cfg["home_id"], '<p><b>%s</b></p>' % msg if msg else "", m["host"], m["port"]))


async def _reply(w: "asyncio.StreamWriter", status: str, body: str) -> None:
    w.write(("HTTP/1.0 %s\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: "
             "no-store\r\nConnection: close\r\n\r\n" % status).encode())
    w.write(body.encode())
    await w.drain()


def run(cfg: "Json", path: str, log: "Log", reset: "Callable[[], object]",
        network: "Any" = None, port: int = PORT) -> int:
    """Open the access point and serve the set-up page until it is saved; then reset()."""
    from hemsfw.store import Store

    if network is None:
        import network
    ap = network.WLAN(network.AP_IF)
    ap.active(True)
    essid = "hems-" + cfg["home_id"]
    apw = cfg["wifi"].get("ap_password")
    if apw:
        ap.config(essid=essid, password=apw, security=3)   # WPA2
    else:
        ap.config(essid=essid)
    done = asyncio.Event()
    d = path.rsplit("/", 1)[0] if "/" in path else "."   # the config file's directory
    name = path.rsplit("/", 1)[-1]

    async def serve(rd: "asyncio.StreamReader", w: "asyncio.StreamWriter") -> None:
        try:
            parts = (await asyncio.wait_for(rd.readline(), 5)).decode().split()
            clen = 0
            n = 0
            while True:
                h = await asyncio.wait_for(rd.readline(), 5)
                n += len(h)
                if h in (b"\r\n", b"\n", b"") or n > 1024:
                    break
                if h.lower().startswith(b"content-length:"):
                    clen = int(h.split(b":")[1])
            if len(parts) >= 2 and parts[0] == "POST" and parts[1] == "/save" and \
                    0 < clen <= 512:
                f = form_fields((await asyncio.wait_for(rd.read(clen), 5)).decode())
                new, why = apply(cfg, f)
                if new is None:
                    await _reply(w, "400 Bad Request", page(cfg, why or ""))
                else:
                    Store(d).write(name, new)   # ("": the root, "/config.json")
                    log("wifi set-up: saved; restarting to join", repr(new["wifi"]["ssid"]))
                    await _reply(w, "200 OK", "<p>Saved. The controller restarts and joins "
                                              "the network.</p>")
                    done.set()
            else:
                await _reply(w, "200 OK", page(cfg))
        except Exception as e:
            log("wifi set-up:", type(e).__name__, e)
        finally:
            w.close()
            await w.wait_closed()   # (on MicroPython, close() alone leaves the socket open)

    async def main() -> None:
        srv = await asyncio.start_server(serve, "0.0.0.0", port)
        log("wifi set-up: join", repr(essid), "and open http://" + ap.ifconfig()[0] + "/")
        await done.wait()
        await asyncio.sleep(1)     # the answer reaches the phone before the reset
        srv.close()

    asyncio.run(main())
    ap.active(False)
    reset()
    return 0
