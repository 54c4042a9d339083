"""The CI pipeline of examples/ci, run here as a runner would run it.

The commands are not copied into this file: they are read from the workflow's own
``run:`` blocks (examples/ci/github-actions.yml) and run in order, each in
``bash --noprofile --norc -euo pipefail``, in a fresh copy of the repository per job (the
example app, the committed public key, the inventory), with the secrets and variables the
workflow names supplied here: keys made by ``fleet keys generate``, and a folder (then
moto's S3 server) as the store boards pull from. Artifacts move between jobs as
actions/upload-artifact and actions/download-artifact move them. Only the runner's own
set-up (the step ``install-fleet``, ``uses:`` actions) is left out: this virtual
environment's fleet stands in for it.

GitLab's file is held to the same commands job by job, and both files' conditions are
evaluated for each kind of event (which jobs run on a push to main, to production, ...).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, copy_example, fleet

pytestmark = pytest.mark.integration

CI = REPO / "examples" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
DOCS = REPO / "docs" / "ci.md"
SHELL = "bash --noprofile --norc -euo pipefail {0}"
SETUP = "install-fleet"  # the runner's set-up step in each job; this venv stands in for it
ACTIONS = ("actions/checkout@", "actions/cache@", "actions/upload-artifact@",
           "actions/download-artifact@")
BOARD = "qemu-virt-arm64"
BOARDS = [f"kiosk-{n:02}" for n in range(1, 41)]  # the group production
CANARIES = ["desk-01", "desk-02"]


# ---------------------------------------------------------------- reading the files


class _GitLabLoader(yaml.SafeLoader):
    """GitLab's `!reference [job, key]` tag, kept as a marker."""


_GitLabLoader.add_constructor(
    "!reference", lambda loader, node: ("!reference", loader.construct_sequence(node))
)


def github() -> dict[str, Any]:
    doc = yaml.safe_load(GITHUB.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def gitlab() -> dict[str, Any]:
    return yaml.load(GITLAB.read_text(), Loader=_GitLabLoader)  # a SafeLoader


GITLAB_KEYWORDS = {"stages", "workflow", "variables", "default", "include", "image",
                   "services", "cache", "before_script", "after_script"}


def gitlab_jobs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in doc.items() if k not in GITLAB_KEYWORDS and not k.startswith(".")}


# ------------------------------------------- the expressions of `if:`, `rules:` and `${{ }}`

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^']|'')*'|"[^"]*")|(?P<op>==|!=|&&|\|\||!|\(|\))"""
    r"""|(?P<name>\$?[A-Za-z_][A-Za-z0-9_.\-]*))"""
)


def evaluate(text: str, lookup: Callable[[str], Any]) -> Any:
    """GitHub's and GitLab's expression subset the files use: names, quoted strings,
    == != ! && || and parentheses, with short-circuit values (`a || 'default'`)."""
    tokens: list[tuple[str, str]] = []
    text = text.strip()
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read {text!r} at {text[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match[kind]))
        pos = match.end()
    index = 0

    def peek() -> str | None:
        return tokens[index][1] if index < len(tokens) and tokens[index][0] == "op" else None

    def take() -> tuple[str, str]:
        nonlocal index
        index += 1
        return tokens[index - 1]

    # Each parser returns a thunk, so that `a && b` does not look b up when a is false.
    def either() -> Callable[[], Any]:
        left = both()
        while peek() == "||":
            take()
            right = both()
            left = (lambda a, b: lambda: a() or b())(left, right)
        return left

    def both() -> Callable[[], Any]:
        left = negation()
        while peek() == "&&":
            take()
            right = negation()
            left = (lambda a, b: lambda: a() and b())(left, right)
        return left

    def negation() -> Callable[[], Any]:
        if peek() == "!":
            take()
            inner = negation()
            return lambda: not inner()
        left = atom()
        if peek() in ("==", "!="):
            op = take()[1]
            right = atom()
            if op == "==":
                return lambda: left() == right()
            return lambda: left() != right()
        return left

    def atom() -> Callable[[], Any]:
        kind, value = take()
        if value == "(":
            inner = either()
            assert take()[1] == ")", text
            return inner
        if kind == "str":
            literal = value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1]
            return lambda: literal
        if kind == "name":
            constants = {"true": True, "false": False, "null": None}
            if value in constants:
                return lambda: constants[value]
            return lambda: lookup(value)
        raise ValueError(f"unexpected {value!r} in {text!r}")

    result = either()
    if index != len(tokens):
        raise ValueError(f"cannot read {text!r}")
    return result()


_EXPR = re.compile(r"\$\{\{(.*?)\}\}")


def render(value: Any, lookup: Callable[[str], Any]) -> str:
    """A GitHub env value with its ${{ }} expressions replaced."""
    def one(match: re.Match[str]) -> str:
        result = evaluate(match[1], lookup)
        return "" if result is None else str(result)

    return _EXPR.sub(one, str(value))


def github_lookup(context: dict[str, Any], secrets: dict[str, str] | None = None,
                  variables: dict[str, str] | None = None) -> Callable[[str], Any]:
    def lookup(name: str) -> Any:
        if name.startswith("secrets."):
            if secrets is None or name[8:] not in secrets:
                raise KeyError(f"the workflow names {name}, which the test does not supply")
            return secrets[name[8:]]
        if name.startswith("vars."):
            return (variables or {}).get(name[5:])  # an unset variable is null, as on GitHub
        if name not in context:
            raise KeyError(f"the workflow names {name}, which the test does not model")
        return context[name]

    return lookup


# ---------------------------------------------------------------- which jobs run when


@dataclass(frozen=True)
class Event:
    github: dict[str, Any]
    gitlab: dict[str, str]
    jobs: set[str]


def push(branch: str, jobs: set[str]) -> Event:
    return Event(
        github={"github.event_name": "push", "github.ref": f"refs/heads/{branch}",
                "github.ref_name": branch, "github.event.repository.default_branch": "main"},
        gitlab={"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": branch,
                "CI_DEFAULT_BRANCH": "main"},
        jobs=jobs,
    )


EVENTS = {
    "push to a feature branch": push("feature/x", {"build"}),
    "push to main": push("main", {"build", "publish-canary"}),
    "push to production": push("production", {"build", "rollout-production"}),
    # GitHub's schedule event carries no repository; it runs on the default branch.
    "schedule": Event(
        github={"github.event_name": "schedule", "github.ref": "refs/heads/main",
                "github.ref_name": "main"},
        gitlab={"CI_PIPELINE_SOURCE": "schedule", "CI_COMMIT_BRANCH": "main",
                "CI_DEFAULT_BRANCH": "main"},
        jobs={"refresh-timestamp"},
    ),
    "manual run": Event(
        github={"github.event_name": "workflow_dispatch", "github.ref": "refs/heads/main",
                "github.ref_name": "main", "github.event.repository.default_branch": "main"},
        gitlab={"CI_PIPELINE_SOURCE": "web", "CI_COMMIT_BRANCH": "main",
                "CI_DEFAULT_BRANCH": "main"},
        jobs={"build", "refresh-timestamp"},
    ),
}


def _needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def github_runs(doc: dict[str, Any], context: dict[str, Any]) -> set[str]:
    lookup = github_lookup(context)
    ran: set[str] = set()
    for name, job in doc["jobs"].items():  # in file order, which follows `needs`
        condition = str(job.get("if", "success()")).strip()
        condition = condition.removeprefix("${{").removesuffix("}}")
        if all(n in ran for n in _needs(job)) and (
            condition == "success()" or evaluate(condition, lookup)
        ):
            ran.add(name)
    return ran


def gitlab_runs(doc: dict[str, Any], variables: dict[str, str]) -> set[str]:
    def lookup(name: str) -> Any:
        if not name.startswith("$"):
            raise KeyError(f"{name}: GitLab's variables start with $")
        if name[1:] not in variables:
            raise KeyError(f"the file names {name}, which the test does not model")
        return variables[name[1:]]

    def matches(rules: list[dict[str, Any]]) -> bool:
        for rule in rules:
            if "if" not in rule or evaluate(rule["if"], lookup):
                return rule.get("when", "on_success") != "never"
        return False

    if not matches(doc.get("workflow", {}).get("rules", [{}])):
        return set()
    ran: set[str] = set()
    for name, job in gitlab_jobs(doc).items():
        if all(n in ran for n in _needs(job)) and matches(job.get("rules", [{}])):
            ran.add(name)
    return ran


@pytest.mark.parametrize("event", list(EVENTS))
def test_each_event_runs_its_jobs(event: str) -> None:
    wanted = EVENTS[event]
    assert github_runs(github(), wanted.github) == wanted.jobs, GITHUB.name
    assert gitlab_runs(gitlab(), wanted.gitlab) == wanted.jobs, GITLAB.name


def github_commands(job: dict[str, Any]) -> list[str]:
    return [step["run"].strip() for step in job["steps"]
            if "run" in step and step.get("id") != SETUP]


def test_gitlab_runs_the_same_commands_and_the_docs_name_every_secret() -> None:
    hub, lab = github(), gitlab()
    assert hub["defaults"]["run"]["shell"] == SHELL  # what Runner runs each step with
    assert lab[".fleet"]["before_script"][0] == "set -euo pipefail"
    assert set(gitlab_jobs(lab)) == set(hub["jobs"])
    for name, job in hub["jobs"].items():
        script = [line.strip() for line in gitlab_jobs(lab)[name]["script"]]
        assert script == github_commands(job), f"{name}: the two files differ"
        assert _needs(gitlab_jobs(lab)[name]) == _needs(job), name
    docs = DOCS.read_text()
    named = set(re.findall(r"\b(secrets|vars)\.([A-Z0-9_]+)", GITHUB.read_text()))
    for kind, name in named:
        assert f"`{name}`" in docs, f"docs/ci.md does not explain {kind}.{name}"


# ---------------------------------------------------------------- running the jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upload_root(paths: list[Path]) -> Path:
    """actions/upload-artifact keeps paths relative to their least common ancestor."""
    root = Path(os.path.commonpath([str(p) for p in paths]))
    return root.parent if len(paths) == 1 and root == paths[0] and not root.is_dir() else root


@dataclass
class Ran:
    job: str
    workspace: Path
    temp: Path
    env: dict[str, dict[str, str]] = field(default_factory=dict)  # step name -> its env
    output: dict[str, str] = field(default_factory=dict)


@dataclass
class Runner:
    """Runs one workflow's jobs here. ``checkout`` makes a job's fresh copy of the repo."""

    doc: dict[str, Any]
    base: Path
    checkout: Callable[[Path], None]
    secrets: dict[str, str]
    variables: dict[str, str]
    artifacts: dict[str, Path] = field(default_factory=dict)

    def run(self, job_name: str, event: str) -> Ran:
        context = EVENTS[event].github
        assert job_name in github_runs(self.doc, context), f"{job_name} does not run on {event}"
        job = self.doc["jobs"][job_name]
        work = self.base / job_name
        if work.exists():
            shutil.rmtree(work)
        ran = Ran(job_name, work / "workspace", work / "runner-temp")
        ran.workspace.mkdir(parents=True)
        ran.temp.mkdir()
        lookup = github_lookup(
            {**context, "runner.temp": str(ran.temp), "github.workspace": str(ran.workspace)},
            self.secrets, self.variables,
        )
        for index, step in enumerate(job["steps"]):
            title = step.get("name") or step.get("uses") or step.get("id") or f"step {index}"
            assert "if" not in step and "shell" not in step, f"{job_name}: {title}"
            if "uses" in step:
                self._action(job_name, step, ran)
                continue
            if step.get("id") == SETUP:
                continue
            script = step["run"]
            assert "${{" not in script, (
                f"{job_name}: {title}: pass secrets and variables through env:, "
                "never into the script's text"
            )
            env = dict(os.environ)
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
            env.update(CI="true", GITHUB_ACTIONS="true", RUNNER_TEMP=str(ran.temp),
                       GITHUB_WORKSPACE=str(ran.workspace))
            for scope in (self.doc.get("env"), job.get("env"), step.get("env")):
                for key, value in (scope or {}).items():
                    env[key] = render(value, lookup)
            if "PORT" in env:
                env["PORT"] = str(free_port())  # 18080 may be taken on this machine
            ran.env[title] = env
            path = ran.temp / f"step-{index}.sh"
            path.write_text(script)
            proc = subprocess.run(
                self.doc["defaults"]["run"]["shell"].replace("{0}", str(path)).split(),
                cwd=ran.workspace, env=env, capture_output=True, text=True, timeout=900,
                check=False,
            )
            ran.output[title] = proc.stdout + proc.stderr
            if proc.returncode != 0:
                raise StepFailed(job_name, title, proc.returncode, script, ran.output[title])
        return ran

    def _action(self, job_name: str, step: dict[str, Any], ran: Ran) -> None:
        uses = step["uses"]
        assert uses.startswith(ACTIONS), f"{job_name}: the test does not model {uses}"
        inputs = step.get("with", {})
        if uses.startswith("actions/checkout@"):
            self.checkout(ran.workspace)
        elif uses.startswith("actions/upload-artifact@"):
            paths = [ran.workspace / p for p in inputs["path"].split()]
            for p in paths:
                assert p.exists(), f"{job_name}: nothing to upload at {p}"
            root = upload_root(paths)
            store = self.base / "artifacts" / inputs["name"]
            for p in paths:
                dest = store / p.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, dest)
            self.artifacts[inputs["name"]] = store
        elif uses.startswith("actions/download-artifact@"):
            source = self.artifacts[inputs["name"]]
            shutil.copytree(source, ran.workspace / inputs.get("path", "."), dirs_exist_ok=True)


class StepFailed(AssertionError):
    def __init__(self, job: str, step: str, code: int, script: str, output: str) -> None:
        super().__init__(f"{job}: step {step!r} exited {code}\n--- script\n{script}\n"
                         f"--- output\n{output}")
        self.code = code
        self.output = output


def publish_available() -> bool:
    return fleet("publish", "--help", check=False).returncode == 0


def inventory(groups: dict[str, list[str]]) -> str:
    """fleet's TOML inventory: every group named, even one without boards yet."""
    lines = ["# The boards that pull from the store, by hostname."]
    for name in groups:
        lines.append(f"[groups.{name}]")
    for name, boards in groups.items():
        for board in boards:
            lines += ["[[boards]]", f'name = "{board}"', f'address = "{board}.example.org"',
                      f'profile = "{BOARD}"', f'groups = ["{name}"]']
    return "\n".join(lines) + "\n"


@dataclass
class Pipeline:
    runner: Runner
    store: Path
    keys: Path
    build: Ran


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """The build job of a push to main, run once: host build and test, board build and
    signature, verification, the artifact."""
    base = tmp_path_factory.mktemp("ci")
    keys = base / "keys-made-once"  # outside every workspace: CI only sees the secrets
    for name in ("release", "timestamp", "other"):
        fleet("keys", "generate", "--out", keys, "--name", name)
    repo_inventory = base / "inventory.toml"
    repo_inventory.write_text(inventory({"canary": CANARIES, "production": BOARDS}))

    def checkout(workspace: Path) -> None:
        copy_example("hello-c", workspace / "examples" / "hello-c")
        (workspace / "keys").mkdir()
        shutil.copy(keys / "release.pub", workspace / "keys" / "release.pub")
        shutil.copy(repo_inventory, workspace / "fleet.toml")

    store = base / "store"
    runner = Runner(
        github(), base, checkout,
        # As `gh secret set RELEASE_KEY < keys/release.sec` stores them.
        secrets={"RELEASE_KEY": (keys / "release.sec").read_text(),
                 "TIMESTAMP_KEY": (keys / "timestamp.sec").read_text(),
                 "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
        variables={"FLEET_STORE": str(store)},
    )
    yield Pipeline(runner, store, keys, runner.run("build", "push to main"))


def test_build_job_tests_builds_signs_and_verifies(pipeline: Pipeline) -> None:
    ran = pipeline.build
    assert "hello-c 1.0.0: /health and /version answer" in ran.output[
        "Build for the host and test the app"]
    release = ran.workspace / "out" / "board" / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["board"] == BOARD
    # The secret key went to the runner's temp folder, mode 0600, never into the checkout.
    key_file = ran.temp / "release.sec"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_bytes() == (pipeline.keys / "release.sec").read_bytes()
    assert not list(ran.workspace.rglob("*.sec"))
    uploaded = pipeline.runner.artifacts["release"]
    assert (uploaded / "release" / "manifest.json").exists()
    assert not list(uploaded.rglob("*.sec")) and not list(uploaded.rglob("disk.img"))


def test_verify_step_refuses_a_release_the_committed_key_did_not_sign(
    pipeline: Pipeline,
) -> None:
    """The verify step is a gate: a secret that does not match the committed public key
    (or a release signed by anything else) stops the pipeline there."""
    job = pipeline.runner.doc["jobs"]["build"]
    [step] = [s for s in job["steps"] if s.get("name") == "Verify the release as a board would"]
    env = dict(pipeline.build.env["Verify the release as a board would"],
               RELEASE_PUB=str(pipeline.keys / "other.pub"))
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c",
                           step["run"]], cwd=pipeline.build.workspace, env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode != 0, proc.stdout + proc.stderr


def _current(store: Path, group: str, keys: Path) -> dict[str, Any]:
    """The group's targets document as a board reads it: the timestamp's, both verified."""
    from fleet.pull.publish import read_current
    from fleet.pull.store import open_store
    from fleet.trust import load_public_key

    current = read_current(open_store(str(store)), group,
                           [load_public_key(keys / "timestamp.pub")],
                           [load_public_key(keys / "release.pub")])
    assert current.targets is not None, f"nothing published to {group}"
    return json.loads(current.targets.to_bytes())


def report(store: Path, board: str, group: str, result: str, release: int = 1) -> None:
    """What a board writes once it took (or refused) the release."""
    (store / "reports").mkdir(parents=True, exist_ok=True)
    (store / "reports" / f"{board}.json").write_text(json.dumps({
        "board": board, "group": group, "profile": BOARD, "release": release,
        "version": "1.0.0", "slot": "B", "result": result, "target_release": release,
    }))


def _skip_without_publish() -> None:
    if not publish_available():
        pytest.skip(reason="fleet publish not available")


def test_publish_jobs_to_a_folder_store(pipeline: Pipeline) -> None:
    """main publishes to the canary group; production rolls out in waves of 10% and 100%
    watching the boards' reports (here written as the boards would write them); the
    timer renews the timestamps."""
    _skip_without_publish()
    runner, store = pipeline.runner, pipeline.store
    runner.run("publish-canary", "push to main")
    sha = {p["file"]: p["sha256"] for p in json.loads(
        (pipeline.build.workspace / "out/board/release/manifest.json").read_text())["payloads"]}
    for digest in sha.values():
        assert (store / "objects" / digest).exists()
    assert _current(store, "canary", pipeline.keys)["targets"][BOARD]["percent"] == 100

    for board in BOARDS:
        report(store, board, "production", "updated")
    ran = runner.run("rollout-production", "push to production")
    output = ran.output["Staged rollout to the production group"]
    assert "to 100% of group production" in output, output
    assert _current(store, "production", pipeline.keys)["targets"][BOARD]["percent"] == 100
    assert re.search(r"10%: \d+ updated, 0 failed", output), output

    stamp = store / "groups" / "production" / "timestamp.sig"
    before = {g: (store / "groups" / g / "timestamp.sig").read_bytes()
              for g in ("canary", "production")}
    ran = runner.run("refresh-timestamp", "schedule")
    assert "group production: timestamp" in ran.output["Renew the timestamps"]
    for group, old in before.items():
        assert (store / "groups" / group / "timestamp.sig").read_bytes() != old, group
    assert stamp.exists()


def test_a_failing_wave_halts_the_rollout_and_fails_the_job(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """One board of the 10% wave rolled back: over the 2% budget, so the percentage stays
    at 10 and the production job fails instead of going on to 100%."""
    _skip_without_publish()
    store = tmp_path / "store"
    runner = Runner(pipeline.runner.doc, tmp_path, pipeline.runner.checkout,
                    pipeline.runner.secrets, {"FLEET_STORE": str(store)},
                    dict(pipeline.runner.artifacts))
    from fleet.pull.phasing import in_wave

    first_wave = [b for b in BOARDS if in_wave(b, 1, 10)]
    assert first_wave, "no board of the inventory falls in the 10% wave"
    for board in BOARDS:
        report(store, board, "production", "rolled-back" if board == first_wave[0] else "updated")
    with pytest.raises(StepFailed) as failed:
        runner.run("rollout-production", "push to production")
    assert failed.value.code == 14, failed.value
    assert "halted" in failed.value.output
    assert _current(store, "production", pipeline.keys)["targets"][BOARD]["percent"] == 10


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """moto's standalone S3 server on loopback (moto[server], in the dev extras)."""
    server = Path(sys.executable).with_name("moto_server")
    if not server.exists():
        pytest.skip("moto_server (moto[server]) not installed")
    port = free_port()
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def test_publish_jobs_to_an_s3_store(pipeline: Pipeline, moto_s3: str, tmp_path: Path) -> None:
    """The same jobs with FLEET_STORE=s3://..., the endpoint of an S3-compatible server
    and the AWS credentials from the secrets: the release, the documents and the canary
    boards' report grants land in the bucket; the timer renews them."""
    _skip_without_publish()
    boto3 = pytest.importorskip("boto3")
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1",
                      aws_access_key_id="ci-key", aws_secret_access_key="ci-secret")
    s3.create_bucket(Bucket="fleet-ci")
    runner = Runner(
        pipeline.runner.doc, tmp_path, pipeline.runner.checkout,
        {**pipeline.runner.secrets, "AWS_ACCESS_KEY_ID": "ci-key",
         "AWS_SECRET_ACCESS_KEY": "ci-secret"},
        {"FLEET_STORE": "s3://fleet-ci/fleet", "FLEET_S3_ENDPOINT": moto_s3,
         "AWS_DEFAULT_REGION": "us-east-1", "FLEET_REFRESH_GROUPS": "canary"},
        dict(pipeline.runner.artifacts),
    )

    def objects() -> dict[str, str]:
        listing = s3.list_objects_v2(Bucket="fleet-ci", Prefix="fleet/")
        return {o["Key"].removeprefix("fleet/"): o["ETag"] for o in listing.get("Contents", [])}

    runner.run("publish-canary", "push to main")
    after_publish = objects()
    manifest = json.loads(
        (pipeline.build.workspace / "out/board/release/manifest.json").read_text())
    for payload in manifest["payloads"]:
        assert f"objects/{payload['sha256']}" in after_publish
    for board in CANARIES:
        assert f"groups/canary/grants/{board}.json" in after_publish
    ran = runner.run("refresh-timestamp", "schedule")
    assert "group canary: timestamp" in ran.output["Renew the timestamps"]
    after_refresh = objects()
    stamp = "groups/canary/timestamp.sig"
    assert after_refresh[stamp] != after_publish[stamp]
    assert not any(name.startswith("groups/production") for name in after_refresh)
