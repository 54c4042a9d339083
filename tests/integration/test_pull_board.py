"""The board's own pull code (fleet/device/pull) against a store behind a real nginx:
what it takes, and each thing item 4 of the issue says it refuses (a replayed timestamp,
an older targets version, another release's manifest or payload, endless data, another
group's document, an expired document, garbage), writing nothing to a slot."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import trust as trustlib
from fleet.pull import documents as d
from fleet.pull import nginx
from fleet.pull import publish as pub
from fleet.pull.phasing import bucket
from fleet.pull.store import DirStore
from tests.agent_tree import AgentTree, make_release
from tests.pull_board import (
    DAY,
    NEEDS_PULL_BOARD,
    Keys,
    ca_and_server_cert,
    make_keys,
    publish,
    pull,
    pulling_board,
)

pytestmark = [pytest.mark.integration, NEEDS_PULL_BOARD]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("releases")
    return {n: make_release(base / f"r{n}", keys.release_sec, n) for n in (2, 3)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "store"
    folder.mkdir()
    with nginx.serving(folder, tmp_path / "nginx") as web:
        yield folder, web.url()


@pytest.fixture
def board(tmp_path: Path, keys: Keys, store: tuple[Path, str]) -> Iterator[AgentTree]:
    tree = pulling_board(tmp_path / "board" / "root", keys, store[1])
    yield tree
    tree.close()


def slots(tree: AgentTree) -> tuple[dict[str, object], bytes]:
    state = json.loads(tree.agent("status").stdout)
    parts = b"".join(hashlib.sha256(tree.partition(n)).digest() for n in (3, 6))
    return state["slots"], parts


def assert_refused(tree: AgentTree, want: str) -> None:
    before = slots(tree)
    code, text = pull(tree)
    assert code == 3, text
    assert want in text, text
    after = slots(tree)
    assert after == before, "a refusal changed a slot"
    assert after[0]["B"] is None


def test_a_board_takes_its_release_when_its_turn_comes(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    place = bucket("board-1", 2)
    publish(store[0], releases[2], keys, percent=place)  # the wave stops just short of it
    code, text = pull(board)
    assert code == 0 and f"this board is at {place}%: not yet" in text, text
    assert json.loads(board.agent("status").stdout)["slots"]["B"] is None

    publish(store[0], releases[2], keys, percent=place + 1)
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    state = json.loads(board.agent("status").stdout)
    assert state["trial_slot"] == "B" and state["slots"]["B"]["release"] == 2
    assert board.partition(6)[: 5000] == (releases[2] / "rootfs.img").read_bytes()[:5000]
    assert board.reboots(), "the trial reboot was not asked for"


def test_a_replayed_older_timestamp_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[2], keys, percent=0)
    old = (store[0] / pub.timestamp_name("lobby")).read_bytes()
    publish(store[0], releases[2], keys, percent=0, now=lambda: time.time() + 5)
    assert pull(board)[0] == 0
    (store[0] / pub.timestamp_name("lobby")).write_bytes(old)
    assert_refused(board, "already seen (replayed)")


def test_a_frozen_store_is_refused_once_its_timestamp_expires(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[2], keys, now=lambda: time.time() - 2 * DAY)
    assert_refused(board, "expired at")


def test_an_older_targets_version_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    first = publish(store[0], releases[2], keys, percent=0)
    publish(store[0], releases[3], keys, percent=0, now=lambda: time.time() + 5)
    assert pull(board)[0] == 0
    # A timestamp, validly signed and newer, that names the first targets again.
    folder = DirStore(store[0])
    old = d.parse_targets(
        (store[0] / pub.targets_name("lobby", first.targets_version)).read_bytes())
    current = pub.read_current(folder, "lobby", [trustlib.load_public_key(keys.timestamp_pub)],
                               [trustlib.load_public_key(keys.release_pub)])
    pub.write_timestamp(folder, current.timestamp, old,
                        trustlib.load_secret_key(keys.timestamp_sec), int(time.time()) + 10, DAY)
    assert_refused(board, "already seen (rollback)")


def test_another_releases_manifest_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    done = publish(store[0], releases[3], keys)
    r3 = (store[0] / "objects" / _manifest_sha(releases[3])).read_bytes()
    r2 = (releases[2] / "manifest.json").read_bytes()
    assert done.release == 3 and r3 != r2
    (store[0] / "objects" / _manifest_sha(releases[3])).write_bytes(r2)
    assert_refused(board, "mix-and-match")


def test_another_releases_payload_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[3], keys)
    sha = _payload_sha(releases[3], "rootfs")
    other = (releases[2] / "rootfs.img").read_bytes()
    # The same length, so only the read-back hash can tell.
    mine = (releases[3] / "rootfs.img").read_bytes()
    (store[0] / "objects" / sha).write_bytes(other[: len(mine)].ljust(len(mine), b"\0"))
    code, text = pull(board)
    assert code == 3 and "the signed manifest says" in text, text
    assert json.loads(board.agent("status").stdout)["slots"]["B"] is None
    assert not board.reboots(wait=0.5)


def test_more_bytes_than_signed_write_nothing(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[3], keys)
    sha = _payload_sha(releases[3], "rootfs")
    with (store[0] / "objects" / sha).open("ab") as handle:
        handle.write(b"\0" * (4 << 20))  # endless, as far as the signed size goes
    assert_refused(board, "payload rootfs is longer in the store than the manifest's")


def test_another_groups_document_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[3], keys, group="kiosk")
    theirs = store[0] / pub.timestamp_name("kiosk")
    (store[0] / "groups/lobby").mkdir(parents=True)
    shutil.copyfile(theirs, store[0] / pub.timestamp_name("lobby"))
    assert_refused(board, "timestamp is for group 'kiosk', not 'lobby'")


def test_an_expired_targets_document_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[3], keys, expires_s=1, now=lambda: time.time() - 60)
    folder = DirStore(store[0])
    current = pub.read_current(folder, "lobby", [trustlib.load_public_key(keys.timestamp_pub)],
                               [trustlib.load_public_key(keys.release_pub)])
    assert current.targets is not None
    pub.write_timestamp(folder, current.timestamp, current.targets,
                        trustlib.load_secret_key(keys.timestamp_sec), int(time.time()), DAY)
    assert_refused(board, "expired at")


@pytest.mark.parametrize("garbage", [b"", b"not signify\n\n{}\n", bytes(range(256)) * 3,
                                     b"x" * 5000])
def test_garbage_from_the_store_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path],
    garbage: bytes,
) -> None:
    publish(store[0], releases[3], keys)
    (store[0] / pub.timestamp_name("lobby")).write_bytes(garbage)
    assert_refused(board, "timestamp")


def test_a_targets_document_signed_by_another_key_is_refused(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path],
    tmp_path: Path,
) -> None:
    other = trustlib.generate_key(tmp_path / "other", "release")
    forged = Keys(other.secret, other.public, keys.timestamp_sec, keys.timestamp_pub)
    publish(store[0], releases[3], forged)
    assert_refused(board, "0 valid signature(s) from trusted keys, need 1")


def test_a_refusal_is_reported_once(
    board: AgentTree, store: tuple[Path, str], keys: Keys, releases: dict[int, Path]
) -> None:
    publish(store[0], releases[3], keys, now=lambda: time.time() - 2 * DAY)
    assert pull(board)[0] == 3
    assert pull(board)[0] == 3  # the report goes out at the start of the next poll
    report = json.loads((store[0] / "reports/board-1.json").read_text())
    assert report["result"] == "refused" and "expired" in report["reason"]
    assert report["board"] == "board-1" and report["group"] == "lobby"
    assert report["release"] == 1 and report["profile"] == "qemu-virt-arm64"
    sent = (store[0] / "reports/board-1.json").stat().st_mtime_ns
    assert pull(board)[0] == 3
    assert (store[0] / "reports/board-1.json").stat().st_mtime_ns == sent


def _manifest_sha(release: Path) -> str:
    return hashlib.sha256((release / "manifest.json").read_bytes()).hexdigest()


def _payload_sha(release: Path, name: str) -> str:
    doc = json.loads((release / "manifest.json").read_text())
    return next(p["sha256"] for p in doc["payloads"] if p["name"] == name)


def test_a_store_that_sends_more_than_it_says_writes_no_whole_payload(
    tmp_path: Path, keys: Keys, releases: dict[int, Path]
) -> None:
    """A server without Range support answers the board's three size checks (busybox
    wget's --spider is a GET) honestly, then sends the payload with no length and
    streams on until the board hangs up (wget itself stops at a Content-Length):
    fleet-tool take holds the last block back, so the slot never holds the payload and
    is never recorded."""
    import http.server
    import threading

    folder = tmp_path / "store"
    publish(folder, releases[3], keys)
    sha = _payload_sha(releases[3], "rootfs")
    asked: list[str] = []

    class Liar(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, directory=str(folder), **k)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            asked.append(self.path)
            if not self.path.endswith(sha) or asked.count(self.path) <= 3:
                return super().do_GET()
            body = (folder / "objects" / sha).read_bytes()
            self.send_response(200)
            self.end_headers()
            try:
                self.wfile.write(body)
                for _ in range(64):
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tree = pulling_board(tmp_path / "board" / "root", keys,
                         f"http://127.0.0.1:{server.server_address[1]}")
    try:
        code, text = pull(tree)
        assert code == 3 and "longer than its signed size" in text, text
        state = json.loads(tree.agent("status").stdout)
        assert state["slots"]["B"] is None and not state["trial_slot"]
        assert not tree.reboots(wait=0.5)
    finally:
        tree.close()
        server.shutdown()


def _with_openssl(tree: AgentTree, ca: Path) -> None:
    """What an image with [pull] https = true carries (fleet/image/rootfs.py _add_tls):
    openssl with its libraries, and the CA bundle at openssl's default CA file."""
    from fleet.image.rootfs import CA_BUNDLE
    from fleet.lab import simtree

    openssl = Path(shutil.which("openssl") or "/usr/bin/openssl").resolve()
    simtree._copy_in(tree.root, openssl, "usr/bin/openssl")
    for lib in simtree._libraries(openssl):
        simtree._copy_in(tree.root, lib)
    (tree.root / CA_BUNDLE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca, tree.root / CA_BUNDLE)
    (tree.root / "etc/hosts").write_text("127.0.0.1 localhost\n")


@pytest.mark.skipif(not Path("/usr/bin/openssl").exists(), reason="needs openssl")
def test_an_https_store_is_pulled_with_its_certificate_checked(
    tmp_path: Path, keys: Keys, releases: dict[int, Path]
) -> None:
    """Debian's busybox wget hands https to `openssl s_client -verify_return_error
    -verify_hostname`: a certificate the board's CA bundle does not vouch for is refused
    before a byte of the store is read."""
    ca, cert, key = ca_and_server_cert(tmp_path / "tls", "localhost")
    other_ca, _, _ = ca_and_server_cert(tmp_path / "other", "localhost")
    folder = tmp_path / "store"
    folder.mkdir()
    publish(folder, releases[2], keys)
    with nginx.serving(folder, tmp_path / "nginx", tls=(cert, key)) as web:
        url = web.url("localhost")
        assert url.startswith("https://")
        strange = pulling_board(tmp_path / "strange" / "root", keys, url)
        try:
            _with_openssl(strange, other_ca)
            code, text = pull(strange)
            assert code == 1 and "error:" in text, text
            assert json.loads(strange.agent("status").stdout)["slots"]["B"] is None
        finally:
            strange.close()
        board = pulling_board(tmp_path / "board" / "root", keys, url)
        try:
            _with_openssl(board, ca)
            code, text = pull(board)
            assert code == 0 and "trying release 2" in text, text
            assert json.loads(board.agent("status").stdout)["slots"]["B"]["release"] == 2
        finally:
            board.close()
