# Wi-Fi set-up without a PC: what the set-up page's form does to the config (hemsfw/setup_ap.py),
# under MicroPython and CPython.  Over real HTTP on the unix port: tests/test_firmware_setup_ap.py

from hemsfw import config, setup_ap

KEY = "c8" * 32


def _cfg():
    return config.check({"home_id": "h1", "board": "esp32",
                         "mqtt": {"host": "192.0.2.1", "user": "h1", "password": "p"},
                         "plan_wh": [1], "keys": {"mb1": KEY}, "state_dir": "/s",
                         "relay": {"pin": 26}, "wifi": {"ssid": "", "password": ""}})


def test_an_empty_ssid_asks_for_the_setup_access_point():
    assert setup_ap.wanted(_cfg())
    c = _cfg()
    c["wifi"]["ssid"] = "home"
    assert not setup_ap.wanted(c)


def test_the_form_fills_wifi_and_broker_into_a_checked_config():
    c = _cfg()
    new, why = setup_ap.apply(c, {"ssid": "home net", "password": "s3cret-pw",
                                  "host": "192.0.2.9", "port": "8883"})
    assert why is None
    assert new["wifi"]["ssid"] == "home net" and new["wifi"]["password"] == "s3cret-pw"
    assert new["mqtt"]["host"] == "192.0.2.9" and new["mqtt"]["port"] == 8883
    assert config.check(new)["home_id"] == "h1"
    assert c["wifi"]["ssid"] == ""                 # the running config is left alone


def test_the_form_refuses_what_would_not_work():
    c = _cfg()
    ok = {"ssid": "home", "password": "", "host": "h", "port": "1883"}
    for patch, text in (({"ssid": ""}, "network name"), ({"password": "short"}, "8 to 63"),
                        ({"host": " "}, "broker's address"), ({"port": "x"}, "is a number"),
                        ({"port": "70000"}, "mqtt.port")):
        f = dict(ok)
        f.update(patch)
        new, why = setup_ap.apply(c, f)
        assert new is None and text in why, (patch, why)
