"""Who may do what on a board (issue 10, item 5), on real QEMU virt boards:

- the key the host updates with runs the agent's verbs and nothing else (a forced
  command in authorized_keys), on every image;
- a production image (the default build) lets no key into a shell; a development image
  (fleet build --dev) also takes the lab's shell key;
- the app runs as its own unprivileged user, which cannot write the boot state, the
  floor, authorized_keys or the slots.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet import lab, ssh
from fleet.update import machine
from fleet.update.status import parse_status
from fleet.update.target import resolve
from tests.conftest import NEEDS_QEMU, Built, copy_example, fleet

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]

SECONDS = "a number of seconds from 1 to 600"
VERBS = " (status, await-decision, install-manifest, install, install-delta, try, commit, rollback)"
PROD = "trust-prod"
DEV = "trust-dev"


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Iterator[str]:
    base = tmp_path_factory.mktemp("production")
    app = copy_example("hello-c", base / "app", lock_from=hello_virt.app)
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", base / "out",
          "--key", hello_virt.key)
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", base / "out" / "disk.img",
          "--name", PROD)
    yield PROD
    fleet("lab", "down", PROD, check=False)


@pytest.fixture(scope="module")
def development(hello_virt: Built) -> Iterator[str]:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk, "--name", DEV)
    yield DEV
    fleet("lab", "down", DEV, check=False)


def agent_key_exec(name: str, command: str) -> tuple[int, str]:
    """Run ``command`` with the key `fleet update` uses (the lab's agent key)."""
    board = lab.get(name)
    with ssh.Session.connect("127.0.0.1", board.ssh_port, "root", board.key_path,
                             board.known_hosts_path) as session:
        result = session.exec(command, timeout=30)
    return result.exit_code, result.stderr.decode()


@pytest.mark.parametrize("name", [PROD, DEV])
def test_the_update_key_runs_only_the_agents_verbs(
    name: str, production: str, development: str
) -> None:
    status = machine.board_status(resolve(name))
    assert status.running_slot == "A" and status.app_version == "1.0.0"
    for command, refusal in (
        ("cat /etc/shadow", "this key may run only /etc/fleet/agent VERB"),
        ("/etc/fleet/agent status; id", "unexpected characters in the command"),
        ("/etc/fleet/agent status $(id)", "unexpected characters in the command"),
        ("/etc/fleet/agent boot", f"'boot' is not one of the agent's verbs{VERBS}"),
        ("/etc/fleet/agent watchdog-off", f"'watchdog-off' is not one of the agent's verbs{VERBS}"),
        ("/etc/fleet/agent install ../../dev/vda5", "no payload '../../dev/vda5'"),
        ("/etc/fleet/agent install home", "no payload 'home'"),
        ("/etc/fleet/agent await-decision", "agent await-decision takes one number of seconds"),
        ("/etc/fleet/agent await-decision 601", f"agent await-decision takes {SECONDS}"),
        ("/etc/fleet/agent await-decision 0", f"agent await-decision takes {SECONDS}"),
        ("/bin/sh -c id", "this key may run only /etc/fleet/agent VERB"),
    ):
        code, err = agent_key_exec(name, command)
        assert (code, err) == (3, f"refused: {refusal}\n"), command


def test_the_update_key_can_wait_for_the_boards_decision(production: str) -> None:
    """`fleet update` asks once after a trial reboot; the board answers with its status
    when its health watcher has decided (here long since: a healthy, committed boot)."""
    board = lab.get(production)
    with ssh.Session.connect("127.0.0.1", board.ssh_port, "root", board.key_path,
                             board.known_hosts_path) as session:
        result = session.exec("/etc/fleet/agent await-decision 30", timeout=60)
    assert result.exit_code == 0, result.stderr
    status = parse_status(result.stdout, production)
    assert (status.health, status.running_slot, status.committed) == ("healthy", "A", True)


def test_a_production_image_lets_no_one_into_a_shell(production: str) -> None:
    proc = fleet("lab", "ssh", production, "--", "id", check=False)
    assert proc.returncode == 255, proc.stdout
    assert "uid=0" not in proc.stdout
    console = lab.get(production).console_log.read_text(errors="replace")
    assert "ignored fleet/shell_keys: a production image takes no shell keys" in console


def test_a_development_image_takes_the_shell_key(development: str) -> None:
    proc = fleet("lab", "ssh", development, "--", "id", "-u")
    assert proc.stdout.strip() == "0"


def test_the_app_runs_unprivileged_and_cannot_touch_the_trust_path(development: str) -> None:
    with lab.session(lab.get(development)) as session:
        pid = session.exec("pidof hello-c").stdout.decode().split()
        assert len(pid) == 1
        status = session.exec(f"cat /proc/{pid[0]}/status").stdout.decode()
        assert "\nUid:\t1000\t1000\t1000\t1000\n" in status
        assert "\nNoNewPrivs:\t1\n" in status
        for target in (
            "/boot/firmware/fleet/bootstate.1",  # the boot state and the floor
            "/dev/vda6",  # a slot
            "/run/root/.ssh/authorized_keys",
            "/data/ssh/authorized_keys",
            "/data/fleet/trial",
        ):
            tried = session.exec(
                f"/usr/sbin/fleet-tool as-user 1000 1000 sh -c 'echo x >> {target}'"
            )
            assert tried.exit_code != 0, target
            assert b"Permission denied" in tried.stderr, (target, tried.stderr)
        remount = session.exec(
            "/usr/sbin/fleet-tool as-user 1000 1000 mount -o remount,rw /boot/firmware"
        )
        assert remount.exit_code != 0
        # Its own folder it can write.
        own = session.exec("/usr/sbin/fleet-tool as-user 1000 1000 sh -c 'echo x > /data/app/own'")
        assert own.exit_code == 0, own.stderr

