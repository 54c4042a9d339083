"""Publishing to S3: moto's standalone server (``moto_server``, moto 5 from PyPI, in the
dev extras) speaks S3's HTTP API on loopback. What fleet publish put there is read back
with boto3 and by plain HTTP, a board's own pull code updates from it, and its report
goes up through its per-board presigned POST grant."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.lab.ports import free_loopback_port
from fleet.pull import documents as d
from fleet.pull import publish as pub
from fleet.trust import load_public_key
from tests.agent_tree import available, make_release
from tests.conftest import fleet
from tests.pull_board import Keys, make_keys, pulling_board

boto3 = pytest.importorskip("boto3")
pytestmark = pytest.mark.integration

BUCKET = "fleet-releases"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    port = free_loopback_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    return make_release(tmp_path_factory.mktemp("r2") / "release", keys.release_sec, 2)


@pytest.fixture(scope="module")
def published(s3: str, keys: Keys, release: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, object]:
    inventory = tmp_path_factory.mktemp("inv") / "fleet.toml"
    inventory.write_text('[[boards]]\nname = "board-1"\naddress = "192.0.2.10"\n'
                         'groups = ["lobby"]\n')
    args = ["publish", release, "--to", f"s3://{BUCKET}/fleet", "--endpoint-url", s3,
            "--group", "lobby", "--key", keys.release_sec, "--timestamp-key", keys.timestamp_sec,
            "--acl", "public-read", "-I", inventory, "--json"]
    done: dict[str, object] = json.loads(fleet(*args).stdout)
    again = json.loads(fleet(*args).stdout)  # idempotent: nothing sent twice
    assert again["uploaded"] == 0 and again["changed"] is False, again
    return done


def test_what_was_published_reads_back_with_boto3_and_plain_http(
    s3: str, published: dict[str, object], release: Path, keys: Keys
) -> None:
    client = boto3.client("s3", endpoint_url=s3)
    manifest = json.loads((release / "manifest.json").read_text())
    for payload in manifest["payloads"]:
        obj = client.get_object(Bucket=BUCKET, Key=f"fleet/objects/{payload['sha256']}")
        body = obj["Body"].read()
        assert hashlib.sha256(body).hexdigest() == payload["sha256"]
        assert "immutable" in obj["CacheControl"]
    stamp = client.get_object(Bucket=BUCKET, Key="fleet/groups/lobby/timestamp.sig")
    assert "max-age=30" in stamp["CacheControl"]
    over_http = urllib.request.urlopen(
        f"{s3}/{BUCKET}/fleet/{pub.timestamp_name('lobby')}", timeout=10).read()
    assert over_http == stamp["Body"].read()
    message = d.open_embedded(over_http, [load_public_key(keys.timestamp_pub)], "timestamp")
    assert d.parse_timestamp(message).targets_version == published["targets_version"]
    grant = json.loads(client.get_object(
        Bucket=BUCKET, Key="fleet/groups/lobby/grants/board-1.json")["Body"].read())
    assert grant["fields"]["key"] == "fleet/reports/board-1.json"


@pytest.mark.skipif(not available() or shutil.which("nginx") is None, reason="needs root")
def test_a_board_pulls_from_s3_and_reports_through_its_grant(
    s3: str, published: dict[str, object], keys: Keys, tmp_path: Path
) -> None:
    tree = pulling_board(tmp_path / "board" / "root", keys, f"{s3}/{BUCKET}/fleet")
    try:
        proc = tree.run("once", program="/etc/fleet/pull", timeout=120)
        assert proc.returncode == 0 and b"trying release 2" in proc.stdout, proc
        # The trial "boot": the release is committed, and the next poll reports it.
        tree.set_cmdline("console=ttyAMA0 fleet.slot=B fleet.trial=1")
        tree.set_app("2.0.0", 2)
        (tree.root / "data/fleet/trial").write_text("release=2 slot=B from=A booted\n")
        assert tree.agent("commit").returncode == 0
        (tree.root / "run/fleet/watch-done").write_text("")
        proc = tree.run("report", program="/etc/fleet/pull", timeout=60)
        assert proc.returncode == 0, proc
    finally:
        tree.close()
    listed = fleet("status", "--published", f"s3://{BUCKET}/fleet", "--endpoint-url", s3,
                   "--json").stdout
    status = json.loads(listed)
    board = next(b for b in status["boards"] if b["board"] == "board-1")
    assert board["result"] == "updated" and board["release"] == 2 and board["slot"] == "B"
    assert status["groups"]["lobby"] == {"updated": 1}
