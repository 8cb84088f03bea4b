"""The coordinator as a service: the schedule (schedule.py), the daemon that runs rounds on it
(daemon.py: due, missed, resumed, archived, status), its health checks, and the deployment units.
Pure tests: a list for a network and a clock the test moves (tests/coordinator_kit.py)."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from coordinator_kit import ListTransport, ManualClock, capacity_message, settings

from backend.coordinator.__main__ import status_problem
from backend.coordinator.daemon import Daemon, DaemonConfig
from backend.coordinator.schedule import Schedule, ScheduleError, parse_clock_time
from backend.coordinator.supply import SupplyBook
from backend.mask_broker.__main__ import check as mask_broker_check
from hemsfw import protocol

REPO = Path(__file__).resolve().parents[1]
T = parse_clock_time
TOKYO = Schedule("Asia/Tokyo", ((T("12:00"), T("13:00")),))


def at(day: str, hhmm: str, tz: str = "Asia/Tokyo") -> int:
    return int(dt.datetime.combine(dt.date.fromisoformat(day), T(hhmm), ZoneInfo(tz))
               .timestamp())


# ------------------------------------------------------------------ the schedule


def test_a_round_is_announced_the_day_before_at_local_times() -> None:
    (rt,) = TOKYO.rounds_of(dt.date(2026, 12, 5))
    assert (rt.day, rt.round) == ("2026-12-05", 1)
    assert rt.announce_at == at("2026-12-04", "12:00")
    assert rt.deadline == at("2026-12-04", "13:00")
    assert rt.start == at("2026-12-05", "00:00") and rt.end - rt.start == 86_400


def test_several_rounds_a_day_are_numbered_in_order() -> None:
    s = Schedule("UTC", ((T("06:00"), T("07:00")), (T("18:00"), T("19:00"))))
    assert [(r.round, r.announce_at % 86_400) for r in s.rounds_of(dt.date(2026, 1, 2))] == [
        (1, 6 * 3600), (2, 18 * 3600)]


@pytest.mark.parametrize(("kw", "match"), [
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"rounds": ((T("13:00"), T("12:00")),)}, "must come after"),
    ({"rounds": ((T("12:00"), T("14:00")), (T("13:00"), T("15:00")))}, "before round 1"),
    ({"frames": 90}, "24 h"),
    ({"rounds": ()}, "at least one round"),
])
def test_a_schedule_that_cannot_run_is_refused_with_the_reason(kw: dict[str, object],
                                                               match: str) -> None:
    base: dict[str, object] = {"timezone": "UTC", "rounds": ((T("12:00"), T("13:00")),)}
    with pytest.raises(ScheduleError, match=match):
        Schedule(**{**base, **kw})  # type: ignore[arg-type]


def test_on_a_dst_day_the_frames_start_at_local_midnight() -> None:
    berlin = Schedule("Europe/Berlin", ((T("12:00"), T("13:00")),))
    (spring,) = berlin.rounds_of(dt.date(2026, 3, 29))  # 23 local hours
    assert spring.start == at("2026-03-29", "00:00", "Europe/Berlin")
    assert spring.end - spring.start == 86_400  # 24 h of frames: an hour into the next day


# ------------------------------------------------------------------ the daemon


def daemon(tmp: Path, clock: ManualClock, out: ListTransport | None = None) -> Daemon:
    tpl = settings(expected_homes=None, capacity_wait_s=0.0)
    d = Daemon(DaemonConfig(tpl, Schedule("UTC", ((T("12:00"), T("13:00")),), frames=8,
                                           frame_s=10_800), tmp / "state"),
               clock, SupplyBook(fixed=capacity_message(8, 1000), frames=8))
    d.attach(out or ListTransport())
    return d


async def run_for(d: Daemon, seconds: float) -> None:
    task = asyncio.create_task(d.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def announcements(out: ListTransport) -> list[dict[str, object]]:
    return [json.loads(p) for t, p, _ in out.published if t == protocol.t_round()]


def test_the_service_announces_a_round_when_it_is_due_and_not_before(tmp_path: Path) -> None:
    clock = ManualClock(at("2026-12-04", "11:00", "UTC"))
    out = ListTransport()
    d = daemon(tmp_path, clock, out)

    async def go() -> None:
        task = asyncio.create_task(d.run())
        await asyncio.sleep(0.1)
        assert announcements(out) == []  # an hour early
        status = json.loads((tmp_path / "state" / "status.json").read_text())
        assert status["next"]["day"] == "2026-12-05"
        clock.t = at("2026-12-04", "12:00", "UTC") + 1
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())
    (ann,) = announcements(out)
    assert ann["day"] == "2026-12-05" and ann["deadline"] == at("2026-12-04", "13:00", "UTC")


def test_a_round_whose_window_passed_while_the_service_was_down_is_recorded_missed(
        tmp_path: Path) -> None:
    clock = ManualClock(at("2026-12-04", "15:00", "UTC"))  # after 2026-12-05's deadline
    out = ListTransport()
    asyncio.run(run_for(daemon(tmp_path, clock, out), 0.1))
    rec = json.loads((tmp_path / "state" / "results" / "2026-12-05-r1.json").read_text())
    assert rec["status"] == "failed" and rec["error"].startswith("missed")
    assert announcements(out) == []  # nothing announced for a round it cannot run


def test_a_restarted_service_resumes_the_open_round_with_the_same_announcement(
        tmp_path: Path) -> None:
    clock = ManualClock(at("2026-12-04", "12:00", "UTC") + 5)
    first, again = ListTransport(), ListTransport()
    asyncio.run(run_for(daemon(tmp_path, clock, first), 0.1))
    clock.t += 600  # ten minutes later, still collecting
    asyncio.run(run_for(daemon(tmp_path, clock, again), 0.1))
    assert announcements(first) == announcements(again) and len(announcements(again)) == 1
    journal = tmp_path / "state" / "round-2026-12-05-1.jsonl"
    kinds = [json.loads(x)["kind"] for x in journal.read_bytes().splitlines()]
    assert kinds.count("round") == 1 and kinds.count("start") == 2


def test_journals_of_days_long_over_are_deleted_and_their_records_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "results").mkdir(parents=True)
    old = state / "round-2026-11-20-1.jsonl"
    old.write_text('{"kind": "round"}\n')
    (state / "results" / "2026-11-20-r1.json").write_text("{}")
    (state / "results" / "2024-01-01-r1.json").write_text("{}")  # past keep_result_days
    clock = ManualClock(at("2026-12-04", "11:00", "UTC"))
    asyncio.run(run_for(daemon(tmp_path, clock), 0.05))
    assert not old.exists()
    assert (state / "results" / "2026-11-20-r1.json").exists()
    assert not (state / "results" / "2024-01-01-r1.json").exists()


# ------------------------------------------------------------------ health checks


def test_status_check_says_why_a_service_is_unhealthy() -> None:
    now = time.time()
    fine = {"pid": os.getpid(), "written_at": now, "mqtt": {"connected": True}}
    assert status_problem(fine, now) is None
    assert "not connected" in str(status_problem({**fine, "mqtt": {"connected": False}}, now))
    assert "not updated" in str(status_problem({**fine, "written_at": now - 600}, now))
    assert "not running" in str(status_problem({**fine, "pid": 2**22 + 7}, now))


def test_mask_broker_check_reads_its_stats_file(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"pid": os.getpid(), "written_at": time.time(),
                                 "mqtt": {"connected": True}}))
    assert mask_broker_check(stats, time.time()) is None
    assert "not updated" in str(mask_broker_check(stats, time.time() + 3600))
    assert "no usable stats" in str(mask_broker_check(tmp_path / "none.json", time.time()))


# ------------------------------------------------------------------ deployment units


@pytest.mark.parametrize("unit", sorted((REPO / "deploy" / "systemd").glob("*.service")),
                         ids=lambda p: p.name)
def test_each_unit_restarts_its_service_and_runs_a_hems_command(unit: Path) -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string(unit.read_text())
    svc = cp["Service"]
    assert svc["Restart"] == "always"
    argv = svc["ExecStart"].replace("\\\n", " ").split()
    if "mosquitto" in unit.name:
        assert argv[0] == "/usr/sbin/mosquitto"
        return
    assert argv[0].endswith("/bin/hems")
    if svc.get("Type") == "notify":
        assert int(svc["WatchdogSec"]) >= 60  # the services say WATCHDOG=1 every <= 30 s
    # the command line parses (%i: a mask broker id); --help exits 0 only if every option exists
    args = [a.replace("%i", "mb1") for a in argv[1:]]
    words = list(itertools.takewhile(lambda a: not a.startswith("-"), args))  # the command
    r = subprocess.run([sys.executable, "-m", "backend.cli", *words, "--help"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    for opt in (a for a in args[1:] if a.startswith("--")):
        assert opt in r.stdout, (unit.name, opt)


def test_the_example_config_gives_every_service_valid_options() -> None:
    r = subprocess.run([sys.executable, "-m", "backend.cli", "--config",
                        str(REPO / "deploy" / "hems.toml.example"), "config"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["commands"]["coordinator"]
    assert "--announce=12:00" in got and "--timezone=Asia/Tokyo" in got
