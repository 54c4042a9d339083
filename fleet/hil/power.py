"""Power drivers: each switches one board's supply through one kind of resource."""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Protocol, TextIO

from fleet import run
from fleet.errors import FleetError, LabError, ProgramError

TIMEOUT = 60.0  # seconds a switching program may take
DELAY = 2.0  # seconds off before on again, for the board's capacitors to drain


class PowerError(FleetError):
    """A board's power could not be switched; the message says which and why."""

    exit_code = LabError.exit_code


class Power(Protocol):
    def on(self) -> None: ...
    def off(self) -> None: ...
    def cycle(self) -> None: ...
    def describe(self) -> str: ...


# A last line that only points at --help: the line before it says what went wrong.
_HINT = re.compile(r"(?i)(run with -h\b|try .*--help)")


def _run(argv: Sequence[str], timeout: float = TIMEOUT) -> str:
    """Run ``argv`` (never through a shell); its stdout, or a PowerError with its last
    words on stderr."""
    try:
        proc = run.run(argv, check=False, timeout=timeout)
    except ProgramError as exc:
        raise PowerError(str(exc)) from exc
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.decode(errors="replace").splitlines()]
        words = [line for line in lines if line and not _HINT.search(line)]
        last = words[-1] if words else "no output"
        raise PowerError(f"{run.quote(argv)} failed (exit {proc.returncode}): {last}")
    return proc.stdout.decode(errors="replace")


class VirtualPower:
    """A board of the virtual lab, QEMU or simulated: ``fleet.lab.power`` switches it."""

    def __init__(self, board_name: str, *, wait: bool = True, timeout: float = 120.0) -> None:
        self.board_name = board_name
        self.wait = wait
        self.timeout = timeout

    def on(self) -> None:
        self._switch("on")

    def off(self) -> None:
        self._switch("off")

    def cycle(self) -> None:
        self._switch("cycle")

    def describe(self) -> str:
        return f"virtual lab board {self.board_name}"

    def _switch(self, action: str) -> None:
        # Imported here: the lab pulls in provisioning, which real boards never need.
        from fleet import lab

        try:
            lab.power(self.board_name, action, wait=self.wait, timeout=self.timeout)
        except LabError as exc:
            raise PowerError(str(exc)) from exc


# uhubctl's README (github.com/mvp/uhubctl, "Usage"): -l picks the hub by location,
# -p the port, -a the action (off/on/cycle/toggle), -d the seconds cycle stays off.
# After each "Sent power on|off request" it prints "New status for hub ..." and a
# "  Port N: SSSS flags [device]" line per port, flags "off" or "power ...".
_PORT_LINE = re.compile(r"\s*Port (\d+): [0-9a-f]{4}([^\[]*)")


class UhubctlPower:
    """A board powered from one port of a USB hub with per-port power switching."""

    def __init__(
        self, location: str, port: int, delay: float = DELAY, program: str = "uhubctl"
    ) -> None:
        self.location = location
        self.port = port
        self.delay = delay
        self.program = program

    def on(self) -> None:
        self._switch("on", "on")

    def off(self) -> None:
        self._switch("off", "off")

    def cycle(self) -> None:
        self._switch("on", "cycle", "-d", f"{self.delay:g}")

    def describe(self) -> str:
        return f"USB hub {self.location} port {self.port} (uhubctl)"

    def _switch(self, want: str, action: str, *extra: str) -> None:
        argv = [self.program, "-l", self.location, "-p", str(self.port), "-a", action, *extra]
        output = _run(argv, TIMEOUT + self.delay)
        # uhubctl exits 0 even when the hub ignored the request (its main() sets rc = 0
        # after the loop): only the new status it prints says the port switched.
        states = self._reported(output, want)
        if not states:
            raise PowerError(
                f"uhubctl reported no new status for port {self.port} of hub {self.location}"
            )
        if any(state != want for state in states):
            raise PowerError(
                f"port {self.port} of USB hub {self.location} did not switch {want} "
                f"(uhubctl -a {action} reports it {'on' if want == 'off' else 'off'})"
            )

    def _reported(self, output: str, want: str) -> list[str]:
        """The port's states in each new status printed after a power ``want`` request
        (a USB3 hub and its USB2 twin each print one)."""
        sent, in_new, states = "", False, []
        for line in output.splitlines():
            if line.startswith("Sent power "):
                sent = line.split()[2]
            elif line.startswith(("Current status", "New status")):
                in_new = line.startswith("New status")
            elif in_new and sent == want:
                found = _PORT_LINE.match(line)
                if found and int(found[1]) == self.port:
                    states.append("on" if "power" in found[2].split() else "off")
        return states


# libgpiod's gpioset(1). v1: `gpioset CHIP OFFSET=VALUE` sets the line and exits
# (--mode=exit is the default). v2 keeps the line "until the process exits, but after
# that [it] is not guaranteed"; -t 0 would set and exit, leaving a relay undefined, so
# v2 gets -z/--daemonize, documented as "set values then detach from the controlling
# terminal". The detached gpioset keeps the line requested and the next request of it
# would fail (EBUSY): the one started before is stopped first.
class GpioPower:
    """A board behind a relay on a GPIO line, switched with libgpiod's gpioset."""

    def __init__(
        self,
        chip: str,
        line: int,
        active_low: bool = False,
        program: str = "gpioset",
        *,
        delay: float = DELAY,
    ) -> None:
        self.chip = chip
        self.line = line
        self.active_low = active_low
        self.program = program
        self.delay = delay
        self._major: int | None = None

    # active_low is applied here, in the value, rather than with gpioset's --active-low:
    # one place inverts, and v1 and v2 get the same value.
    def on(self) -> None:
        self._set(0 if self.active_low else 1)

    def off(self) -> None:
        self._set(1 if self.active_low else 0)

    def cycle(self) -> None:
        self.off()
        time.sleep(self.delay)
        self.on()

    def describe(self) -> str:
        low = ", active low" if self.active_low else ""
        return f"GPIO {self.chip} line {self.line}{low} (gpioset)"

    def _set(self, value: int) -> None:
        setting = f"{self.line}={value}"
        if self._version() < 2:
            _run([self.program, self.chip, setting])
            return
        self._release()
        _run([self.program, "--daemonize", "--chip", self.chip, setting])

    def _version(self) -> int:
        if self._major is None:
            found = re.search(r"\bv(\d+)\.", _run([self.program, "--version"]))
            if found is None:
                raise PowerError(f"{self.program} --version names no version")
            self._major = int(found[1])
        return self._major

    def _release(self) -> None:
        """Stop a daemonized gpioset holding this line, as ``_set`` starts them."""
        options = ["--daemonize", "--chip", self.chip]
        name = os.path.basename(self.program)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            args = cmdline.decode(errors="replace").split("\0")[:-1]
            if (
                len(args) > 4
                and args[-4:-1] == options
                and args[-1].startswith(f"{self.line}=")
                and name in (os.path.basename(arg) for arg in args[:-4])
            ):
                self._stop(int(entry.name))

    def _stop(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise PowerError(
                f"GPIO {self.chip} line {self.line} is held by process {pid}, "
                "which this user may not stop"
            ) from exc
        deadline = time.monotonic() + 5
        while _running(pid):
            if time.monotonic() > deadline:
                raise PowerError(f"gpioset (pid {pid}) holding line {self.line} did not stop")
            time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Not our child, it may stay a zombie where nothing reaps: it holds no line then.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if (new.scheme, new.netloc) != (old.scheme, old.netloc):
            fp.close()
            raise PowerError(f"PDU {old.netloc} redirected to {new.netloc}: not followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# No proxies from the environment: a PDU sits on the lab's own network.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _SameHostRedirects())


class HttpPdu:
    """A board on an outlet of a network PDU switched by one HTTP request per state."""

    def __init__(
        self,
        url_template_on: str,
        url_template_off: str,
        outlet: int | str,
        method: str = "POST",
        timeout: float = 10,
        *,
        delay: float = DELAY,
    ) -> None:
        self.outlet = outlet
        self.method = method.upper()
        self.timeout = timeout
        self.delay = delay
        self._urls = {"on": self._url(url_template_on), "off": self._url(url_template_off)}

    def on(self) -> None:
        self._send("on")

    def off(self) -> None:
        self._send("off")

    def cycle(self) -> None:
        self.off()
        time.sleep(self.delay)
        self.on()

    def describe(self) -> str:
        return f"PDU outlet {self.outlet} at {urllib.parse.urlsplit(self._urls['on']).netloc}"

    def _url(self, template: str) -> str:
        # Quoted whole, the outlet stays one path or query part: it cannot name a host.
        url = template.replace("{outlet}", urllib.parse.quote(str(self.outlet), safe=""))
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PowerError(f"a PDU URL must be http:// or https:// with a host: {template!r}")
        if parts.username is not None:
            # urllib would take user:password@ for part of the host name, and errors would show it.
            raise PowerError("a PDU URL cannot carry a user name or password")
        return url

    def _send(self, state: str) -> None:
        url = self._urls[state]
        where = urllib.parse.urlsplit(url)
        body = b"" if self.method in ("POST", "PUT", "PATCH") else None
        request = urllib.request.Request(url, data=body, method=self.method)  # noqa: S310 (scheme checked in _url)
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            status = exc.code
        except urllib.error.URLError as exc:
            raise PowerError(f"PDU {where.netloc} unreachable: {exc.reason}") from exc
        except OSError as exc:
            raise PowerError(f"PDU {where.netloc} unreachable: {exc}") from exc
        if not 200 <= status < 300:
            raise PowerError(
                f"PDU {where.netloc} answered HTTP {status} to {self.method} {where.path} "
                f"(outlet {self.outlet} {state})"
            )


class CommandPower:
    """A board switched by commands of the lab's own (a relay board's CLI, a script)."""

    def __init__(
        self,
        on: list[str],
        off: list[str],
        cycle: list[str] | None = None,
        *,
        board: str = "",
        delay: float = DELAY,
        timeout: float = TIMEOUT,
    ) -> None:
        for what, argv in (("on", on), ("off", off), ("cycle", cycle)):
            if argv is not None and not argv:
                raise PowerError(f"the power {what} command is empty")
        self.on_argv = on
        self.off_argv = off
        self.cycle_argv = cycle
        self.board = board
        self.delay = delay
        self.timeout = timeout

    def on(self) -> None:
        self._do(self.on_argv)

    def off(self) -> None:
        self._do(self.off_argv)

    def cycle(self) -> None:
        if self.cycle_argv is not None:
            self._do(self.cycle_argv)
            return
        self.off()
        time.sleep(self.delay)
        self.on()

    def describe(self) -> str:
        return f"power commands (on: {run.quote(self._argv(self.on_argv))})"

    def _argv(self, template: list[str]) -> list[str]:
        # replace, not format: other braces in an argument are the command's own.
        return [arg.replace("{board}", self.board) for arg in template]

    def _do(self, template: list[str]) -> None:
        _run(self._argv(template), self.timeout)


class ManualPower:
    """A board whose power a person switches when asked, for a bench without relays."""

    def __init__(
        self,
        board_name: str,
        prompt_in: TextIO | None = None,
        prompt_out: TextIO | None = None,
    ) -> None:
        # None means sys.stdin / sys.stderr as they are when asked (tests swap them).
        self.board_name = board_name
        self.prompt_in = prompt_in
        self.prompt_out = prompt_out

    def on(self) -> None:
        self._ask("ON")

    def off(self) -> None:
        self._ask("OFF")

    def cycle(self) -> None:
        self._ask("OFF")
        self._ask("ON")

    def describe(self) -> str:
        return f"manual power for {self.board_name}"

    def _ask(self, state: str) -> None:
        source = self.prompt_in if self.prompt_in is not None else sys.stdin
        out = self.prompt_out if self.prompt_out is not None else sys.stderr
        if source is None or not _answerable(source):
            raise PowerError("manual power needs a person at the terminal")
        out.write(f"power {state} board {self.board_name}, then press Enter\n")
        out.flush()
        if not source.readline():
            raise PowerError("manual power needs a person at the terminal")


def _answerable(stream: TextIO) -> bool:
    """A terminal, or input with a line (or its end) ready: never a wait for no one."""
    try:
        if stream.isatty():
            return True
        fd = stream.fileno()
    except ValueError:  # closed, or in memory (io.UnsupportedOperation): readline tells
        return not stream.closed
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)
