"""The hardware-in-the-loop power and console drivers against stand-ins at their edges:
fake uhubctl and gpioset programs first on PATH, an HTTP server on loopback for the PDU,
a pseudo-terminal for the serial port and a growing file for a virtual board's console."""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.hil.console import ConsoleError, ConsoleTimeout, FileConsole, SerialConsole
from fleet.hil.power import (
    CommandPower,
    GpioPower,
    HttpPdu,
    ManualPower,
    PowerError,
    UhubctlPower,
    VirtualPower,
)

pytestmark = pytest.mark.integration

SEP = "\x1f"  # between the arguments a fake records, so each is kept exactly

# Prints what uhubctl's main() prints: for each power request a "Current status", the
# "Sent power X request" line and the "New status" of the port. FAKE_UHUBCTL=stuck: the
# port stays as it was (uhubctl still exits 0); =fail: no hub, as uhubctl says it.
FAKE_UHUBCTL = r"""#!/bin/sh
for arg in "$@"; do printf '%s\037' "$arg"; done >> "$FAKE_ARGV"
printf '\n' >> "$FAKE_ARGV"
if [ "$FAKE_UHUBCTL" = fail ]; then
    echo "No compatible devices detected at location $2!" >&2
    echo "Run with -h to get usage info." >&2
    exit 1
fi
while [ $# -gt 0 ]; do
    case "$1" in
        -l) loc=$2; shift ;;
        -p) port=$2; shift ;;
        -a) action=$2; shift ;;
    esac
    shift
done
status() {
    if [ "$1" = on ]; then echo "  Port $port: 0503 power highspeed enable connect [0424:ec00]"
    else echo "  Port $port: 0000 off"; fi
}
request() {
    echo "Current status for hub $loc [2109:2817 VIA Labs USB2.0 Hub, USB 2.10, 4 ports, ppps]"
    status "$2"
    echo "Sent power $1 request"
    echo "New status for hub $loc [2109:2817 VIA Labs USB2.0 Hub, USB 2.10, 4 ports, ppps]"
    if [ "$FAKE_UHUBCTL" = stuck ]; then status "$2"; else status "$1"; fi
}
case "$action" in
    on) request on off ;;
    off) request off on ;;
    cycle) request off on; request on off ;;
esac
"""

# libgpiod's gpioset: --version answers $FAKE_GPIOSET_VERSION; with --daemonize it leaves
# a detached copy of itself holding the line, as daemon(3) does, and notes its pid.
FAKE_GPIOSET = f"""#!{sys.executable}
import os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_ARGV"], "a") as log:
    log.write("".join(arg + "{SEP}" for arg in args) + "\\n")
if args == ["--version"]:
    print(os.environ["FAKE_GPIOSET_VERSION"])
    print("Copyright (C) 2017-2023 Bartosz Golaszewski")
    sys.exit(0)
if "--daemonize" in args:
    child = os.fork()
    if child == 0:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(60)
        os._exit(0)
    with open(os.environ["FAKE_HOLDERS"], "a") as held:
        held.write(f"{{child}} {{args[-1]}}\\n")
"""

V1 = "gpioset (libgpiod) v1.6.3"
V2 = "gpioset (libgpiod) v2.1.2"


def install(bin_dir: Path, name: str, text: str) -> Path:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def calls(tmp_path: Path) -> list[list[str]]:
    """Each run of a fake program, as the arguments it was given."""
    record = tmp_path / "argv"
    if not record.exists():
        return []
    return [line.split(SEP)[:-1] for line in record.read_text().splitlines()]


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH for fake programs; they record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ARGV", str(tmp_path / "argv"))
    return bin_dir


@pytest.fixture
def gpioset(tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake gpioset; yields the file where its detached holders note their pids."""
    holders = tmp_path / "holders"
    monkeypatch.setenv("FAKE_HOLDERS", str(holders))
    install(tools, "gpioset", FAKE_GPIOSET)
    yield holders
    if holders.exists():
        for line in holders.read_text().splitlines():
            pid = int(line.split()[0])
            if running(pid):
                os.kill(pid, signal.SIGTERM)


# --- uhubctl ---------------------------------------------------------------------------


def test_uhubctl_switches_the_port_with_its_documented_options(tools: Path, tmp_path: Path) -> None:
    install(tools, "uhubctl", FAKE_UHUBCTL)
    hub = UhubctlPower("1-1.3", 2, delay=1.5)
    hub.off()
    hub.on()
    hub.cycle()
    assert calls(tmp_path) == [
        ["-l", "1-1.3", "-p", "2", "-a", "off"],
        ["-l", "1-1.3", "-p", "2", "-a", "on"],
        ["-l", "1-1.3", "-p", "2", "-a", "cycle", "-d", "1.5"],
    ]
    assert hub.describe() == "USB hub 1-1.3 port 2 (uhubctl)"


def test_uhubctl_failure_names_what_it_said(
    tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tools, "uhubctl", FAKE_UHUBCTL)
    monkeypatch.setenv("FAKE_UHUBCTL", "fail")
    with pytest.raises(PowerError, match=r"exit 1\): No compatible devices detected at location"):
        UhubctlPower("1-1", 2).on()


def test_uhubctl_port_that_did_not_switch_is_an_error(
    tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tools, "uhubctl", FAKE_UHUBCTL)
    monkeypatch.setenv("FAKE_UHUBCTL", "stuck")
    with pytest.raises(PowerError, match="port 2 of USB hub 1-1 did not switch off"):
        UhubctlPower("1-1", 2).off()


def test_uhubctl_missing_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PowerError, match="no-such-uhubctl not found"):
        UhubctlPower("1-1", 2, program="no-such-uhubctl").on()


# --- gpioset ---------------------------------------------------------------------------


@pytest.mark.parametrize(("active_low", "on", "off"), [(False, "1", "0"), (True, "0", "1")])
def test_gpioset_v1_sets_the_line_and_exits(
    gpioset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    active_low: bool,
    on: str,
    off: str,
) -> None:
    monkeypatch.setenv("FAKE_GPIOSET_VERSION", V1)
    relay = GpioPower("gpiochip0", 17, active_low=active_low, delay=0)
    relay.on()
    relay.off()
    relay.cycle()
    assert calls(tmp_path) == [
        ["--version"],
        ["gpiochip0", f"17={on}"],
        ["gpiochip0", f"17={off}"],
        ["gpiochip0", f"17={off}"],
        ["gpiochip0", f"17={on}"],
    ]
    assert not gpioset.exists()


@pytest.mark.parametrize(("active_low", "on", "off"), [(False, "1", "0"), (True, "0", "1")])
def test_gpioset_v2_daemonizes_and_stops_the_holder_before(
    gpioset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    active_low: bool,
    on: str,
    off: str,
) -> None:
    monkeypatch.setenv("FAKE_GPIOSET_VERSION", V2)
    relay = GpioPower("gpiochip0", 17, active_low=active_low, delay=0)
    relay.on()
    relay.off()
    assert calls(tmp_path) == [
        ["--version"],
        ["--daemonize", "--chip", "gpiochip0", f"17={on}"],
        ["--daemonize", "--chip", "gpiochip0", f"17={off}"],
    ]
    holders = [line.split() for line in gpioset.read_text().splitlines()]
    assert [value for _, value in holders] == [f"17={on}", f"17={off}"]
    # One holder of the line at a time: the kernel would refuse the second (EBUSY).
    assert [running(int(pid)) for pid, _ in holders] == [False, True]
    assert relay.describe() == (
        "GPIO gpiochip0 line 17, active low (gpioset)"
        if active_low
        else "GPIO gpiochip0 line 17 (gpioset)"
    )


# --- HTTP PDU --------------------------------------------------------------------------

Seen = list[tuple[str, str, bytes]]


@pytest.fixture
def pdu() -> Iterator[tuple[str, Seen]]:
    """A PDU's web API on loopback: records each request; /broken answers 500, /moved
    redirects to another host name."""
    seen: Seen = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append((self.command, self.path, self.rfile.read(length)))
            if self.path.startswith("/broken"):
                self.send_response(500)
            elif self.path.startswith("/moved"):
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{port}/elsewhere")
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", seen
    server.shutdown()
    server.server_close()


def test_pdu_sends_one_request_per_state(pdu: tuple[str, Seen]) -> None:
    base, seen = pdu
    outlet = HttpPdu(f"{base}/outlets/{{outlet}}/on", f"{base}/outlets/{{outlet}}/off", 3, delay=0)
    outlet.on()
    outlet.off()
    outlet.cycle()
    assert seen == [
        ("POST", "/outlets/3/on", b""),
        ("POST", "/outlets/3/off", b""),
        ("POST", "/outlets/3/off", b""),
        ("POST", "/outlets/3/on", b""),
    ]
    assert outlet.describe() == f"PDU outlet 3 at {base.removeprefix('http://')}"


def test_pdu_outlet_is_quoted_into_the_url(pdu: tuple[str, Seen]) -> None:
    base, seen = pdu
    outlet = HttpPdu(
        f"{base}/cmd?outlet={{outlet}}&state=1",
        f"{base}/cmd?outlet={{outlet}}&state=0",
        "A 1/@x",
        method="get",
    )
    outlet.off()
    assert seen == [("GET", "/cmd?outlet=A%201%2F%40x&state=0", b"")]


def test_pdu_error_status_is_an_error(pdu: tuple[str, Seen]) -> None:
    base, seen = pdu
    outlet = HttpPdu(f"{base}/broken/{{outlet}}", f"{base}/broken/{{outlet}}", 4)
    with pytest.raises(PowerError, match=r"answered HTTP 500 to POST /broken/4 \(outlet 4 on\)"):
        outlet.on()
    assert seen == [("POST", "/broken/4", b"")]


def test_pdu_redirect_to_another_host_is_not_followed(pdu: tuple[str, Seen]) -> None:
    base, seen = pdu
    outlet = HttpPdu(f"{base}/moved", f"{base}/moved", 1)
    with pytest.raises(PowerError, match=r"redirected to localhost:\d+: not followed"):
        outlet.off()
    assert seen == [("POST", "/moved", b"")]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/on", "http:///on"])
def test_pdu_refuses_other_urls_before_any_request(pdu: tuple[str, Seen], url: str) -> None:
    base, seen = pdu
    with pytest.raises(PowerError, match="must be http:// or https:// with a host"):
        HttpPdu(url, f"{base}/off", 1)
    assert seen == []


def test_pdu_refuses_credentials_in_the_url(pdu: tuple[str, Seen]) -> None:
    base, seen = pdu
    with pytest.raises(PowerError, match=r"cannot carry a user name or password$"):
        HttpPdu(base.replace("//", "//admin:secret@") + "/on", f"{base}/off", 1)
    assert seen == []


def test_pdu_unreachable_is_an_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outlet = HttpPdu(f"http://127.0.0.1:{port}/on", f"http://127.0.0.1:{port}/off", 1)
    with pytest.raises(PowerError, match=f"PDU 127.0.0.1:{port} unreachable"):
        outlet.on()


# --- commands, manual, virtual ---------------------------------------------------------

RECORDER = r"""#!/bin/sh
for arg in "$@"; do printf '%s\037' "$arg"; done >> "$FAKE_ARGV"
printf '\n' >> "$FAKE_ARGV"
if [ "$1" = jammed ]; then echo "relay 3: no answer from the board" >&2; exit 2; fi
"""


def test_command_power_runs_the_argv_without_a_shell(tools: Path, tmp_path: Path) -> None:
    install(tools, "relayctl", RECORDER)
    board = CommandPower(
        on=["relayctl", "--board", "{board}", "on", "$(touch pwned); {x}"],
        off=["relayctl", "{board}-off"],
        board="pi4-7",
        delay=0,
    )
    board.on()
    board.off()
    board.cycle()
    assert calls(tmp_path) == [
        ["--board", "pi4-7", "on", "$(touch pwned); {x}"],
        ["pi4-7-off"],
        ["pi4-7-off"],
        ["--board", "pi4-7", "on", "$(touch pwned); {x}"],
    ]
    assert not (tmp_path / "pwned").exists()


def test_command_power_own_cycle_and_failure(tools: Path, tmp_path: Path) -> None:
    install(tools, "relayctl", RECORDER)
    board = CommandPower(
        ["relayctl", "jammed"], ["relayctl", "off"], ["relayctl", "cycle", "{board}"], board="b1"
    )
    board.cycle()
    assert calls(tmp_path) == [["cycle", "b1"]]
    with pytest.raises(PowerError, match=r"exit 2\): relay 3: no answer from the board$"):
        board.on()
    with pytest.raises(PowerError, match="the power off command is empty"):
        CommandPower(["relayctl"], [])


def test_manual_power_asks_and_waits_for_enter() -> None:
    answers = io.StringIO("\n\n\n\n")
    shown = io.StringIO()
    bench = ManualPower("pi4-bench", prompt_in=answers, prompt_out=shown)
    bench.off()
    bench.on()
    bench.cycle()
    assert shown.getvalue() == (
        "power OFF board pi4-bench, then press Enter\n"
        "power ON board pi4-bench, then press Enter\n"
        "power OFF board pi4-bench, then press Enter\n"
        "power ON board pi4-bench, then press Enter\n"
    )
    assert answers.read() == ""


def test_manual_power_prompts_on_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    ManualPower("b2", prompt_in=io.StringIO("\n")).on()
    assert capsys.readouterr().err == "power ON board b2, then press Enter\n"


def test_manual_power_with_no_one_to_answer_is_an_error() -> None:
    with pytest.raises(PowerError, match=r"^manual power needs a person at the terminal$"):
        ManualPower("b3", prompt_in=io.StringIO(""), prompt_out=io.StringIO()).off()
    read_end, write_end = os.pipe()
    with open(read_end) as empty_pipe, open(write_end, "w") as writer:
        started = time.monotonic()
        with pytest.raises(PowerError, match="needs a person"):
            ManualPower("b3", prompt_in=empty_pipe, prompt_out=io.StringIO()).off()
        assert time.monotonic() - started < 1
        writer.write("\n")
        writer.flush()
        ManualPower("b3", prompt_in=empty_pipe, prompt_out=io.StringIO()).off()


def test_virtual_power_drives_the_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PowerError, match="no lab board named 'nowhere'"):
        VirtualPower("nowhere").on()
    from fleet import lab

    asked: list[tuple[str, str, bool, float]] = []
    monkeypatch.setattr(
        lab,
        "power",
        lambda name, action, *, wait, timeout: asked.append((name, action, wait, timeout)),
    )
    board = VirtualPower("qemu-1", wait=False, timeout=30)
    board.off()
    board.on()
    board.cycle()
    assert asked == [("qemu-1", a, False, 30) for a in ("off", "on", "cycle")]


# --- consoles --------------------------------------------------------------------------


def read_exactly(fd: int, count: int, timeout: float = 5) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            data += os.read(fd, count - len(data))
    return data


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A pseudo-terminal: the test is the board at the master; the slave is the port."""
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_serial_console(pty: tuple[int, str], tmp_path: Path) -> None:
    master, port = pty
    log = tmp_path / "serial.log"
    console = SerialConsole(port, 115200, log)
    boot = b"U-Boot 2023.01\nfleet: system up: slot A\n"
    noise = b"\xfe stray byte\n"
    try:
        os.write(master, boot)
        found = console.expect("system up: slot (.)", timeout=5)
        assert found.group(1) == "A"
        console.send(b"help\n")
        assert read_exactly(master, 5) == b"help\n"
        assert read_exactly(master, 1, timeout=0.2) == b""
        os.write(master, noise)
        console.expect("stray", timeout=5)
        # What the last match consumed is not seen again.
        with pytest.raises(ConsoleTimeout) as timed_out:
            console.expect("system up", timeout=0.3)
    finally:
        console.close()
    assert isinstance(timed_out.value, FleetError)
    assert timed_out.value.tail == "U-Boot 2023.01\nfleet: system up: slot A\n\ufffd stray byte\n"
    assert repr(timed_out.value.tail) in str(timed_out.value)
    assert "'system up' not seen on" in str(timed_out.value)
    assert log.read_bytes() == boot + noise


def test_serial_console_missing_port(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError, match="cannot open serial port /dev/no-such-tty"):
        SerialConsole("/dev/no-such-tty", 115200, tmp_path / "log")


def test_console_timeout_keeps_only_the_last_300_characters(
    pty: tuple[int, str], tmp_path: Path
) -> None:
    master, port = pty
    with SerialConsole(port, 115200, tmp_path / "serial.log") as console:
        os.write(master, b"x" * 1000 + b"END")
        console.expect("END", timeout=5)
        with pytest.raises(ConsoleTimeout) as timed_out:
            console.expect("login:", timeout=0.1)
    assert timed_out.value.tail == "x" * 297 + "END"
    with pytest.raises(ConsoleError, match="is closed"):
        console.expect("END", timeout=5)


def test_file_console_follows_only_new_output(tmp_path: Path) -> None:
    board_log = tmp_path / "console.log"
    board_log.write_bytes(b"fleet: system up: slot B\n")
    console = FileConsole(board_log, tmp_path / "seen.log")
    later = b"Starting kernel ...\nfleet: system up: slot A\n"

    def board() -> None:
        time.sleep(0.2)
        with open(board_log, "ab") as handle:
            for line in later.splitlines(keepends=True):
                handle.write(line)
                handle.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=board)
    writer.start()
    try:
        assert console.expect("system up: slot (.)", timeout=5).group(1) == "A"
        with pytest.raises(ConsoleError, match="read-only"):
            console.send(b"\n")
    finally:
        writer.join()
        console.close()
    assert (tmp_path / "seen.log").read_bytes() == later


def test_file_console_of_a_board_made_anew(tmp_path: Path) -> None:
    board_log = tmp_path / "console.log"
    with FileConsole(board_log, tmp_path / "seen.log") as console:
        board_log.write_bytes(b"first boot: system up\n")
        console.expect("system up", timeout=5)
        board_log.unlink()
        board_log.write_bytes(b"again\n")
        console.expect("again", timeout=5)
    assert (tmp_path / "seen.log").read_bytes() == b"first boot: system up\nagain\n"
