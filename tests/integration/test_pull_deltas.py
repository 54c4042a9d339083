"""Deltas in pull mode: ``fleet publish`` lists deltas from the releases boards run, and
the board's own pull code (fleet/device/pull, in the agent tree with the real applier)
rebuilds each payload from its delta, fetching no whole payload. The attacks first: a
delta or an index that is not the one signed for, a running slot that does not hold what
its record says, an image without an applier; each costs only a full fetch of that
payload, and the slot ends holding exactly the signed bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.errors import ReleaseError
from fleet.pull import deltas as dl
from fleet.pull import nginx
from fleet.release import load_manifest
from tests.agent_tree import (
    AgentTree,
    build_applier,
    make_release,
    related_release,
)
from tests.pull_board import NEEDS_PULL_BOARD, Keys, make_keys, publish, pull, pulling_board

pytestmark = [pytest.mark.integration, NEEDS_PULL_BOARD]

SIZE = 400_000
PARTS = {"boot": 3, "rootfs": 6}  # slot B's partitions


@dataclass(frozen=True)
class Releases:
    r1: Path
    r2: Path
    r3: Path
    other_board: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Releases:
    base = tmp_path_factory.mktemp("releases")
    r1 = make_release(base / "r1", keys.release_sec, 1, size=SIZE)
    r2 = related_release(r1, base / "r2", keys.release_sec, 2)
    return Releases(r1, r2, related_release(r2, base / "r3", keys.release_sec, 3, at=3000),
                    make_release(base / "pi", keys.release_sec, 1, board="rpi4b", size=SIZE))


@pytest.fixture(scope="module")
def applier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_applier(tmp_path_factory.mktemp("applier"))


@dataclass(frozen=True)
class Web:
    """A folder store and the nginx serving it."""

    root: Path
    server: nginx.Nginx

    def url(self) -> str:
        return self.server.url()

    @property
    def access_log(self) -> Path:
        return self.server.access_log


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    folder = tmp_path / "store"
    folder.mkdir()
    with nginx.serving(folder, tmp_path / "nginx") as server:
        yield Web(folder, server)


@pytest.fixture
def board(tmp_path: Path, keys: Keys, web: Web, applier: Path,
          releases: Releases) -> Iterator[AgentTree]:
    """A board flashed with release 1 (its boot state records slot A), with an applier."""
    tree = pulling_board(tmp_path / "board" / "root", keys, web.url())
    tree.add_applier(applier)
    tree.set_meminfo(500_000)
    tree.hold_in_running_slot(releases.r1, record=True)
    yield tree
    tree.close()


def log(tree: AgentTree) -> str:
    return (tree.root / "data/fleet/agent.log").read_text()


def pending(tree: AgentTree, want: str = "2") -> tuple[str, int]:
    """(method, payload bytes fetched) of the release the board is trying."""
    release, _tv, method, fetched = (tree.root / "data/fleet/pull/pending").read_text().split()
    assert release == want
    return method, int(fetched)


def sha_of_manifest(release: Path) -> str:
    return hashlib.sha256((release / "manifest.json").read_bytes()).hexdigest()


def assert_slot_b_holds(tree: AgentTree, release: Path) -> None:
    for payload in load_manifest(release).payloads:
        got = tree.partition(PARTS[payload.name])[: payload.size]
        assert hashlib.sha256(got).hexdigest() == payload.sha256, payload.name


def full_gets(web: Web, release: Path) -> list[str]:
    """The requests that took a whole payload of RELEASE from the store (the size checks
    take a byte each)."""
    shas = {p.sha256: p.size for p in load_manifest(release).payloads}
    taken = []
    for line in web.access_log.read_text().splitlines():
        method, uri, _status, sent = line.split()
        sha = uri.rsplit("/", 1)[-1]
        if method == "GET" and sha in shas and int(sent) >= shas[sha]:
            taken.append(uri)
    return taken


def test_a_board_rebuilds_the_release_from_deltas_and_fetches_no_whole_payload(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    published = publish(web.root, releases.r2, keys, delta_from=[releases.r1])
    assert published.deltas == 2
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    assert_slot_b_holds(board, releases.r2)
    method, fetched = pending(board)
    full = sum(p.size for p in load_manifest(releases.r2).payloads)
    assert method == "delta" and 0 < fetched < 0.05 * full, (method, fetched)
    assert "payload rootfs rebuilt from a delta of" in log(board)
    assert full_gets(web, releases.r2) == []


def test_the_group_s_previous_release_is_a_base_without_being_named(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    first = publish(web.root, releases.r1, keys)
    assert first.deltas == 0
    code, text = pull(board)
    assert code == 0 and "up to date" in text, text
    second = publish(web.root, releases.r2, keys, percent=50)
    assert second.deltas == 2
    again = publish(web.root, releases.r2, keys)  # the next wave keeps them
    assert again.deltas == 2
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    assert pending(board)[0] == "delta"
    assert_slot_b_holds(board, releases.r2)


def indexes(web: Web) -> list[list[dl.Entry]]:
    """Every delta index in the store, oldest first."""
    found = []
    for path in sorted((web.root / "objects").iterdir(), key=lambda p: p.stat().st_mtime_ns):
        if path.stat().st_size <= 32768 and not path.name.endswith(".sig"):
            try:
                found.append(dl.parse_index(path.read_bytes()))
            except ReleaseError:
                continue  # a payload, a manifest or a delta
    return found


def test_a_board_a_staged_publish_left_behind_still_gets_deltas(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    """Release 3 follows release 2 at 50%: the boards still on release 1 (the bases
    release 2's index listed) are carried into release 3's index."""
    publish(web.root, releases.r1, keys)
    publish(web.root, releases.r2, keys, percent=0)
    third = publish(web.root, releases.r3, keys)
    assert third.deltas == 4
    assert {e.base for e in indexes(web)[-1]} == {
        sha_of_manifest(releases.r1), sha_of_manifest(releases.r2)}
    code, text = pull(board)
    assert code == 0 and "trying release 3" in text, text
    assert pending(board, "3")[0] == "delta"
    assert_slot_b_holds(board, releases.r3)


def _objects(web: Web, releases: Releases) -> tuple[Path, dict[str, Path]]:
    """The store's delta index of release 2 and its delta objects, by payload."""
    base = sha_of_manifest(releases.r1)
    for path in (web.root / "objects").iterdir():
        data = path.read_bytes()
        if data.startswith(base.encode()):
            entries = dl.parse_index(data)
            return path, {e.payload: web.root / "objects" / e.sha256 for e in entries}
    raise AssertionError("no delta index in the store")


def test_a_delta_that_is_not_the_one_signed_for_is_never_applied(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    publish(web.root, releases.r2, keys, delta_from=[releases.r1])
    _, deltas = _objects(web, releases)
    data = bytearray(deltas["rootfs"].read_bytes())
    data[len(data) // 2] ^= 1
    deltas["rootfs"].write_bytes(bytes(data))
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    assert_slot_b_holds(board, releases.r2)
    assert pending(board)[0] == "mixed"
    assert ("payload rootfs: the store's delta is not the one the index names; fetching it "
            "whole") in log(board)
    assert "payload boot rebuilt from a delta" in log(board)


def test_an_index_that_is_not_the_one_signed_for_means_whole_payloads(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    publish(web.root, releases.r2, keys, delta_from=[releases.r1])
    listing, _ = _objects(web, releases)
    lines = listing.read_bytes().splitlines(keepends=True)
    listing.write_bytes(b"".join(reversed(lines)))  # the same lines, another hash
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    assert_slot_b_holds(board, releases.r2)
    assert pending(board)[0] == "full"
    assert "the store's delta index is not the one the targets name" in log(board)
    assert "rebuilt from a delta" not in log(board)


def test_a_running_slot_that_is_not_what_its_record_says_gets_the_payload_whole(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    publish(web.root, releases.r2, keys, delta_from=[releases.r1])
    with open(board.loops[5], "r+b") as part:  # slot A's rootfs, changed under its record
        part.seek(200_000)
        part.write(b"\0" * 4096)
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    assert_slot_b_holds(board, releases.r2)
    assert pending(board)[0] == "mixed"
    assert ("release 2: payload rootfs: the delta was refused (the delta does not apply to "
            "this slot") in log(board), log(board)


def test_an_image_without_an_applier_fetches_whole_payloads(
    board: AgentTree, web: Web, keys: Keys, releases: Releases
) -> None:
    (board.root / "usr/sbin/fleet-delta").unlink()
    publish(web.root, releases.r2, keys, delta_from=[releases.r1])
    code, text = pull(board)
    assert code == 0 and "trying release 2" in text, text
    assert_slot_b_holds(board, releases.r2)
    assert pending(board)[0] == "full"
    assert "this image has no delta applier; payloads go whole" in log(board)


def test_no_deltas_and_a_base_of_another_board_refused_before_anything_is_sent(
    tmp_path: Path, keys: Keys, releases: Releases
) -> None:
    store = tmp_path / "store"
    plain = publish(store, releases.r2, keys, delta_from=[releases.r1], deltas=False)
    assert plain.deltas == 0
    assert b'"deltas"' not in next((store / "groups/lobby/targets").glob("*.json")).read_bytes()
    with pytest.raises(ReleaseError, match="release 1 is for rpi4b, this one for qemu-virt"):
        publish(tmp_path / "other", releases.r2, keys, delta_from=[releases.other_board])
    other = tmp_path / "other"
    assert not other.exists() or not [p for p in other.rglob("*") if p.is_file()]
