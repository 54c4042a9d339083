"""One lab board during a run: its drivers made from its resources, its SSH target and
app address, its logs in the run's result folder."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleet import lab as vlab
from fleet.errors import FleetError, LabError
from fleet.hil import power as pw
from fleet.hil.console import Console, FileConsole, SerialConsole
from fleet.hil.labfile import (
    GpioLine,
    Lab,
    LabBoard,
    NetworkAddress,
    Pdu,
    PowerCommand,
    SerialPort,
    UsbPort,
    VirtualBoard,
)
from fleet.hil.release import Release
from fleet.hil.remote import Http, Ssh
from fleet.update import machine
from fleet.update.status import BoardStatus
from fleet.update.target import Target, resolve


@dataclass
class HilBoard:
    spec: LabBoard
    results: Path  # this board's folder of the run's results
    power: pw.Power
    identity: Path | None = None  # SSH key for a board on the network (default ~/.ssh's)
    trust_new_host: bool = False
    consoles: list[Console] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def virtual(self) -> VirtualBoard | None:
        found = self.spec.resources.get(VirtualBoard.key)
        return found if isinstance(found, VirtualBoard) else None

    @property
    def target(self) -> Target:
        """Resolved at each use: a virtual board gets new ports when it is made again."""
        network = self.spec.resources.get(NetworkAddress.key)
        if isinstance(network, NetworkAddress):
            return resolve(
                f"{network.user}@{network.address}:{network.ssh_port}",
                identity=self.identity,
                trust_new_host=self.trust_new_host,
            )
        return resolve(self.name)

    @property
    def ssh(self) -> Ssh:
        """Commands and files: a virtual board through the lab's shell key (a development
        image lets it in), any other through the update key its address gives."""
        if self.virtual is not None:
            name = self.name
            return Ssh(lambda: vlab.session(vlab.get(name)))
        return Ssh.to(self.target)

    @property
    def http(self) -> Http:
        network = self.spec.resources.get(NetworkAddress.key)
        if isinstance(network, NetworkAddress):
            return Http(f"http://{network.address}:{network.http_port}")
        return Http(f"http://127.0.0.1:{vlab.get(self.name).app_port}")

    def status(self) -> BoardStatus:
        return machine.board_status(self.target)

    def wait_settled(
        self, timeout: float, health: tuple[str, ...] = ("healthy",), poll: float = 0.5
    ) -> BoardStatus:
        """The board's status once it answers on a committed slot with one of ``health``
        (after a power cut, a reboot, a rollback); a LabError naming what it last showed
        when that does not come within ``timeout`` seconds (a bricked board)."""
        deadline = time.monotonic() + timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            try:
                now = self.status()
                if now.committed and now.health in health:
                    return now
                problem = f"slot {now.running_slot}, health {now.health}"
            except FleetError as exc:
                problem = str(exc)
            time.sleep(poll)
        raise LabError(f"bricked: board {self.name} not back within {timeout:.0f} s ({problem})")

    def open_console(self) -> Console:
        """The board's console from now on (expect-style); what it reads is logged."""
        log = self.results / "console.log"
        serial = self.spec.resources.get(SerialPort.key)
        if self.spec.drivers.console == "serial" and isinstance(serial, SerialPort):
            opened: Console = SerialConsole(serial.port, serial.baud, log)
        elif self.spec.drivers.console == "qemu":
            opened = FileConsole(vlab.get(self.name).console_log, self.results / "console.tail")
        else:
            raise LabError(f"board {self.name} has no console (console driver 'none')")
        self.consoles.append(opened)
        return opened

    def check_healthy(self, release: Release | None) -> BoardStatus:
        """The board answers, runs a committed slot with a healthy app, and (given a
        release) runs that release: a provisioning that did not take is caught here."""
        now = self.status()
        if not now.committed or now.health != "healthy":
            raise LabError(
                f"board {self.name} is not healthy on a committed slot "
                f"(slot {now.running_slot}, health {now.health or 'unknown'})"
            )
        if release is not None:
            info = now.slot(now.running_slot)
            if info is None or info.manifest_sha256 != release.sha256:
                raise LabError(
                    f"board {self.name} runs {now.app_version}, not the release under test "
                    f"({release.version})"
                )
        return now

    def collect_logs(self) -> None:
        """The whole console log of a virtual board, and the agent's log, into results."""
        self.results.mkdir(parents=True, exist_ok=True)
        if self.virtual is not None:  # QEMU's or the simulator's log of every boot
            with contextlib.suppress(FleetError, OSError):
                shutil.copyfile(vlab.get(self.name).console_log, self.results / "console.log")
        (self.results / "agent.log").write_bytes(self._agent_log())

    def _agent_log(self) -> bytes:
        """The board's /data/fleet/agent.log: from a simulated board's tree, through the
        lab's shell key on a virtual board, else over SSH where the image allows a shell
        (the update key of a production image runs only the agent's verbs)."""
        command = "cat /data/fleet/agent.log"
        try:
            if self.virtual is not None and self.virtual.kind == "sim":
                return (vlab.get(self.name).state_dir / "tree/data/fleet/agent.log").read_bytes()
            answer = self.ssh.run(command, timeout=30)
            said, ok, why = answer.stdout.encode(), answer.ok, answer.stderr.strip()
        except (FleetError, OSError) as exc:
            return f"(not readable: {exc})\n".encode()
        return said if ok else f"(not readable: {why})\n".encode()

    def close(self) -> None:
        for opened in self.consoles:
            opened.close()
        self.consoles.clear()


def power_driver(spec: LabBoard) -> pw.Power:
    kind = spec.drivers.power
    res = spec.resources
    if kind == "virtual":
        return pw.VirtualPower(spec.name)
    if kind == "uhubctl":
        usb = res[UsbPort.key]
        assert isinstance(usb, UsbPort)
        return pw.UhubctlPower(usb.hub, usb.port)
    if kind == "gpio":
        gpio = res[GpioLine.key]
        assert isinstance(gpio, GpioLine)
        return pw.GpioPower(gpio.chip, gpio.line, gpio.active_low)
    if kind == "pdu":
        pdu = res[Pdu.key]
        assert isinstance(pdu, Pdu)
        outlet = "" if pdu.outlet is None else pdu.outlet
        return pw.HttpPdu(pdu.on, pdu.off, outlet)
    if kind == "command":
        cmd = res[PowerCommand.key]
        assert isinstance(cmd, PowerCommand)
        cycle = list(cmd.cycle) if cmd.cycle else None
        return pw.CommandPower(list(cmd.on), list(cmd.off), cycle, board=spec.name)
    if kind == "manual":
        return pw.ManualPower(spec.name)
    raise LabError(f"board {spec.name}: unknown power driver {kind!r}")  # labfile checked


def make_board(
    lab: Lab,
    spec: LabBoard,
    results: Path,
    identity: Path | None = None,
    trust_new_host: bool = False,
) -> HilBoard:
    results.mkdir(parents=True, exist_ok=True)
    return HilBoard(spec, results, power_driver(spec), identity, trust_new_host)
