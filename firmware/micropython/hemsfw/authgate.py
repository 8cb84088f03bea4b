# What an unauthenticated client of the resident's page gets instead of the page: log in, set
# the password (the set-up window after boot), or how to open that window.  hemsfw/webreq.py
# loads this module for such an answer only (answer_auth, once hemsfw/auth.py has decided it and
# left the heap), and hemsfw/web.py drops it after: its HTML is not in the heap while a password
# is set or checked (docs/benchmarks.md, Firmware memory).
# MicroPython subset only.

if False:  # types for mypy only (docs/firmware.md, "Types")
    from collections.abc import Iterator


def gate(title: str, mode: str, msg: str = "") -> "Iterator[str]":
    """What an unauthenticated client gets instead of the page: log in (mode "login"), or set
    the password ("setup": only in the set-up window after boot), or how to open that window
    ("closed"); auth.Auth.gate tells which.  No state."""
    yield ('<!doctype html><html><head><meta charset="utf-8"><title>%s</title><meta '
           'name="viewport" content="width=device-width"></head><body style="font-family:'
           'sans-serif"><h1>%s</h1>' % (title, title))
    if msg:
        yield '<p id="msg"><b>%s</b></p>' % msg
    if mode == "login":
        yield ('<form method="post" action="/login">Password: <input type="password" '
               'name="password" autocomplete="current-password" autofocus> <button>Log in'
               '</button></form>')
    elif mode == "setup":
        yield ('<p>Choose the password for this page (at least 4 characters; a PIN will do)'
               '.</p><form method="post" action="/password"><input type="password" name="new" '
               'minlength="4" autocomplete="new-password" autofocus> <button>Set</button></form>')
    else:
        yield ("<p>No password is set. Switch the controller off and on again, then set one "
               "here within 10 minutes.</p>")
    yield "</body></html>"
