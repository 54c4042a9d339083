"""The host's half of pull mode: phasing, the documents, the publish order (idempotent,
resumable, never showing a board a document whose files are missing), and reports read
as the untrusted input they are."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fleet import trust as trustlib
from fleet.cli.publish import duration, percents
from fleet.errors import ReleaseError, UsageError
from fleet.lab.simrelease import make_release
from fleet.pull import documents as d
from fleet.pull import publish as pub
from fleet.pull import reports as rep
from fleet.pull.phasing import bucket, in_wave
from fleet.pull.store import DirStore, StoreError
from fleet.update.waves import Budget
from signing.canonical import canonical_bytes

pytestmark = pytest.mark.unit
DAY = 86400


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    r, t = trustlib.generate_key(folder, "release"), trustlib.generate_key(folder, "timestamp")
    return {"release": r.secret, "release.pub": r.public, "ts": t.secret, "ts.pub": t.public}


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("rel")
    return {n: make_release(base / f"r{n}", keys["release"], n, size=2000) for n in (2, 3)}


def do_publish(store: DirStore, release: Path, keys: dict[str, Path], percent: int = 100,
               **kw: object) -> pub.Published:
    return pub.publish(store, release, "lobby", percent,
                       [trustlib.load_secret_key(keys["release"])],
                       trustlib.load_secret_key(keys["ts"]), 30 * DAY, DAY, **kw)  # type: ignore[arg-type]


def current(store: DirStore, keys: dict[str, Path]) -> pub.Current:
    return pub.read_current(store, "lobby", [trustlib.load_public_key(keys["ts.pub"])],
                            [trustlib.load_public_key(keys["release.pub"])])


def test_phasing_is_the_boards_hash_and_grows_with_the_percentage() -> None:
    digest = hashlib.sha256(b"kiosk-7:4").hexdigest()
    assert bucket("kiosk-7", 4) == int(digest[:8], 16) % 100
    boards = [f"b{i}" for i in range(1000)]
    for low, high in ((0, 10), (10, 50), (50, 100)):
        inner = {b for b in boards if in_wave(b, 4, low)}
        assert inner <= {b for b in boards if in_wave(b, 4, high)}
    share = sum(in_wave(b, 4, 10) for b in boards) / len(boards)
    assert 0.06 < share < 0.14
    assert not any(in_wave(b, 4, 0) for b in boards) and all(in_wave(b, 4, 100) for b in boards)


def test_a_publish_is_idempotent(tmp_path: Path, keys: dict[str, Path],
                                 releases: dict[int, Path]) -> None:
    store = DirStore(tmp_path)
    first = do_publish(store, releases[2], keys)
    assert first.changed and first.uploaded == 4 and first.skipped == 0
    again = do_publish(store, releases[2], keys)
    assert not again.changed and again.uploaded == 0 and again.skipped == 4
    assert again.targets_version == first.targets_version
    assert again.timestamp_version > first.timestamp_version
    now = current(store, keys)
    assert now.targets is not None and now.targets.targets["qemu-virt-arm64"].release == 2


def test_a_publish_cut_short_shows_boards_nothing_new_and_finishes_when_run_again(
    tmp_path: Path, keys: dict[str, Path], releases: dict[int, Path]
) -> None:
    store = DirStore(tmp_path)
    do_publish(store, releases[2], keys)
    before = (tmp_path / pub.timestamp_name("lobby")).read_bytes()

    class Cut(DirStore):
        def put_bytes(self, name: str, data: bytes, cache: str) -> None:
            if name == pub.timestamp_name("lobby"):
                raise StoreError("the network went away")
            super().put_bytes(name, data, cache)

    with pytest.raises(StoreError):
        do_publish(Cut(tmp_path), releases[3], keys)
    # What a board follows is as it was: the timestamp still names release 2's targets.
    assert (tmp_path / pub.timestamp_name("lobby")).read_bytes() == before
    was = current(store, keys)
    assert was.targets is not None and was.targets.targets["qemu-virt-arm64"].release == 2
    done = do_publish(store, releases[3], keys)
    assert done.uploaded == 0, "the objects sent before the cut are not sent again"
    now = current(store, keys)
    assert now.targets is not None and now.targets.targets["qemu-virt-arm64"].release == 3


def test_publish_refuses_a_tampered_store_and_a_lower_release(
    tmp_path: Path, keys: dict[str, Path], releases: dict[int, Path]
) -> None:
    store = DirStore(tmp_path)
    do_publish(store, releases[3], keys)
    with pytest.raises(ReleaseError, match="boards refuse release 2"):
        do_publish(store, releases[2], keys)
    stamp = tmp_path / pub.timestamp_name("lobby")
    stamp.write_bytes(stamp.read_bytes().replace(b'"group"', b'"groop"'))
    with pytest.raises(d.DocumentError, match="not signed by a trusted timestamp key"):
        do_publish(store, releases[3], keys)


def test_publish_refuses_a_release_whose_payloads_do_not_match(
    tmp_path: Path, keys: dict[str, Path], releases: dict[int, Path]
) -> None:
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(releases[2], broken)
    (broken / "rootfs.img").write_bytes(b"x" * 10)
    with pytest.raises(ReleaseError, match="refusing to publish"):
        do_publish(DirStore(tmp_path / "store"), broken, keys)
    assert not (tmp_path / "store" / "groups").exists()


@pytest.mark.parametrize("data", [
    b"untrusted comment: x\n",
    b"a\nb\nc",
    b"x" * (d.MAX_TIMESTAMP + 1),
])
def test_embedded_signatures_refuse_garbage(data: bytes, keys: dict[str, Path]) -> None:
    with pytest.raises(d.DocumentError):
        d.open_embedded(data, [trustlib.load_public_key(keys["ts.pub"])], "timestamp")


def test_documents_refuse_what_is_not_canonical_or_out_of_range() -> None:
    good = d.Targets("lobby", 5, 100, {"rpi4b": d.Target(2, "2.0.0", "a" * 64, 10, 50)})
    assert d.parse_targets(good.to_bytes()) == good
    text = good.to_bytes().decode()
    for bad in (text.replace('"percent": 50', '"percent": 101'),
                text.replace('"a' * 1, '"A', 1),
                text.replace("fleet-targets", "fleet-timestamp"),
                text.replace(" ", "  ", 1),
                text.replace('"group": "lobby"', '"group": "../x"')):
        with pytest.raises(d.DocumentError):
            d.parse_targets(bad.encode())


@pytest.mark.parametrize("body, problem", [
    (b"{", "malformed report"),
    (b"[]", "not a JSON object"),
    (json.dumps({"board": "other"}).encode(), "names board 'other', not its own"),
    (json.dumps({"board": "b1", "result": "pwned"}).encode(), "is not one of"),
    (json.dumps({"board": "b1", "release": "2"}).encode(), "'release' is not a int"),
    (b" " * (pub.REPORT_MAX + 1), "larger than"),
])
def test_reports_are_untrusted(body: bytes, problem: str) -> None:
    report = rep.parse_report("b1", body)
    assert report.problem is not None and problem in report.problem
    assert rep.tally([report]) == {"(unknown)": {"malformed": 1}}


def test_the_watch_counts_a_wave_and_stops_when_the_budget_is_spent(tmp_path: Path) -> None:
    store = DirStore(tmp_path)
    boards = [f"b{i}" for i in range(40)]
    wave = [b for b in boards if in_wave(b, 7, 50)]
    for i, board in enumerate(wave):
        result = "rolled-back" if i == 0 else "updated"
        store.put_bytes(pub.report_name(board), json.dumps(
            {"board": board, "group": "lobby", "result": result, "target_release": 7}).encode(), "")
    done = rep.watch_wave(store, boards, 7, 50, Budget.parse("0", 1), 0.0)
    assert done.budget_spent and done.failed == (wave[0],) and not done.silent
    done = rep.watch_wave(store, boards, 7, 50, Budget.parse("1", 1), 0.0)
    assert not done.budget_spent and len(done.updated) == len(wave) - 1
    later = rep.watch_wave(store, boards, 7, 100, Budget.parse("1", 1), 0.0)
    assert set(later.silent) == set(boards) - set(wave)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("12h", 43200),
                                           ("7d", 604800), ("600", 600)])
def test_durations(text: str, seconds: int) -> None:
    assert duration(text, "--expires") == seconds


@pytest.mark.parametrize("text", ["0", "1w", "-5m", "", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError):
        duration(text, "--expires")


def test_percentages() -> None:
    assert percents("10,50,100") == [10, 50, 100]
    assert percents("25%") == [25]
    for bad in ("50,10", "101", "x", ""):
        with pytest.raises(UsageError):
            percents(bad)


_LINE = f"{'a' * 64} rootfs 4096 {'b' * 64} 123\n"


@pytest.mark.parametrize(("data", "problem"), [
    (_LINE.encode()[:-1], "its last line is cut off"),
    (_LINE.replace("rootfs", "root fs").encode(), "line 1 is malformed"),
    (_LINE.replace("4096", "-1").encode(), "line 1 is malformed"),
    (_LINE.replace("a" * 64, "A" * 64).encode(), "line 1 is malformed"),
    ((_LINE + _LINE.replace("123", "12 extra")).encode(), "line 2 is malformed"),
    ("é\n".encode(), "not ASCII"),
    (_LINE.encode() * 300, "larger than 32768 bytes"),
])
def test_a_delta_index_is_read_as_a_board_reads_it(data: bytes, problem: str) -> None:
    from fleet.pull import deltas as dl

    with pytest.raises(ReleaseError, match=problem):
        dl.parse_index(data)
    (entry,) = dl.parse_index(_LINE.encode())
    assert (entry.payload, entry.base_size, entry.size) == ("rootfs", 4096, 123)
    assert dl.index_bytes([entry]) == _LINE.encode()


@pytest.mark.parametrize("change", [{"deltas": "x" * 64}, {"deltas_size": 0},
                                    {"deltas_size": 40000}, {"deltas": 5}])
def test_a_targets_entry_with_a_bad_delta_index_is_refused(change: dict[str, object]) -> None:
    entry = {"manifest": "c" * 64, "manifest_size": 900, "percent": 100, "release": 2,
             "version": "2.0.0", "deltas": "d" * 64, "deltas_size": 220}
    doc = {"expires": 1, "group": "lobby", "targets": {"qemu-virt-arm64": entry},
           "type": "fleet-targets", "version": 3}
    assert d.parse_targets(canonical_bytes(doc)).targets["qemu-virt-arm64"].deltas == "d" * 64
    entry.update(change)  # type: ignore[arg-type]
    with pytest.raises(d.DocumentError):
        d.parse_targets(canonical_bytes(doc))
