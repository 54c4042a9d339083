"""Host timestamps on a virtual board's console: QEMU's chardev log has none (its
``timestamp=`` option is for the monitor's messages, not a logfile), so the lab runs this
small follower beside each QEMU. It polls the console log every 10 ms and appends each
line to ``console.stamped`` as ``UNIX-SECONDS<TAB>LINE``, stamped when the line's first
byte arrived; it ends when QEMU does. The boot chart (fleet.lab.bootchart) reads it.

Run as ``python -m fleet.lab.stamps LOG OUT OFFSET QEMU-PID``."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

POLL = 0.01
POWER_ON = "fleet-lab: power on"


def mark_power_on(out: Path, when: float) -> None:
    with open(out, "a") as handle:
        handle.write(f"{when:.3f}\t{POWER_ON}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def follow(log: Path, out: Path, offset: int, pid: int) -> None:
    carry = b""
    carry_at = 0.0
    checked = 0.0
    ending = False
    with open(out, "a") as sink:
        while True:
            now = time.time()
            try:
                with open(log, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                data = b""
            if data:
                offset += len(data)
                if not carry:
                    carry_at = now
                carry += data
                *lines, carry = carry.split(b"\n")
                for raw in lines:
                    text = raw.decode(errors="replace").rstrip("\r")
                    sink.write(f"{carry_at:.3f}\t{text}\n")
                    carry_at = now
                sink.flush()
            if ending:
                if carry:
                    sink.write(f"{carry_at:.3f}\t{carry.decode(errors='replace')}\n")
                return
            if now - checked > 0.1:
                checked = now
                ending = not _alive(pid)  # one more read for what it wrote last
            time.sleep(POLL)


def main() -> None:
    log, out, offset, pid = sys.argv[1:5]
    follow(Path(log), Path(out), int(offset), int(pid))


if __name__ == "__main__":
    main()
