"""The Kubernetes manifests (deploy/k8s): every overlay renders with `kubectl kustomize`, is
valid for a pinned Kubernetes version, passes checkov and yamllint, and, read back from the
rendered YAML, has the properties a cluster operator relies on (probes, rollout, drain,
security context, autoscaling on the queue-depth metric, Indexed Jobs, ...).

Each tool that is absent skips its test with a reason naming it, except in CI (CI=true),
where it fails: kubectl is a Debian package, kubernetes-validate and yamllint are in the
`dev` extra, and checkov is in .venv-tools, made by deploy/k8s/tools-venv.sh (called here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import ROOT, require_tool

K8S = ROOT / "deploy" / "k8s"
KUBE_VERSION = "1.30.0"  # the oldest Kubernetes the manifests support (preStop sleep: 1.30)
IN_CI = os.environ.get("CI") == "true"

# what an operator applies: the app of each environment, and its one-off runs
APPS = {"dev": "overlays/dev", "prod": "overlays/prod"}
JOBS = {"dev": "overlays/dev/jobs", "prod": "overlays/prod/jobs"}
# kinds with no schema in kubernetes-validate (CRDs): validated by the properties below only
CRD_KINDS = {"InferenceService", "ServingRuntime"}
# checkov checks skipped inline, each with its reason in the manifest: secrets as environment
# variables (DATABASE_URL, the ui's CLIP_HAR_API_KEY: no file variant) and image digests
ACCEPTED_CHECKOV_SKIPS = {"CKV_K8S_35", "CKV_K8S_43"}

Doc = dict[str, Any]


def _missing(tool: str, why: str) -> None:
    """Skip (outside CI) or fail (in CI) because ``tool`` is absent."""
    message = f"{tool} is not available ({why})"
    if IN_CI:
        pytest.fail(message + ": CI must install it")
    pytest.skip(message)


def _kubectl() -> str:
    return require_tool("kubectl", "Debian package kubectl")


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s whose Secret values come from the committed example: a local
    secrets.env (git-ignored, real values) is never read by the tests."""
    tree = tmp_path_factory.mktemp("deploy") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    for example in tree.rglob("secrets.env.example"):
        shutil.copyfile(example, example.with_name("secrets.env"))
    return tree


def _render(tree: Path, overlay: str) -> tuple[str, list[Doc]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(tree / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert docs, f"{overlay} rendered nothing"
    return done.stdout, docs


@pytest.fixture(scope="module")
def rendered(k8s_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every overlay rendered once, as files (for checkov)."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for env, overlay in [*APPS.items(), *((f"{e}-jobs", o) for e, o in JOBS.items())]:
        text, _ = _render(k8s_tree, overlay)
        files[env] = out / f"{env}.yaml"
        files[env].write_text(text)
    return files


def _docs(rendered: dict[str, Path], name: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(rendered[name].read_text()) if doc]


@pytest.fixture(scope="module")
def app_docs(rendered: dict[str, Path]) -> dict[str, list[Doc]]:
    return {env: _docs(rendered, env) for env in APPS}


@pytest.fixture(scope="module")
def job_docs(rendered: dict[str, Path]) -> dict[str, list[Doc]]:
    return {env: _docs(rendered, f"{env}-jobs") for env in JOBS}


# --- helpers over rendered documents ------------------------------------------------------


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    """The one document of ``kind`` named ``name`` (a generated one: ``name-<hash>``)."""
    hits = [
        doc
        for doc in docs
        if doc["kind"] == kind
        and re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", doc["metadata"]["name"])
    ]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def pod_labels(doc: Doc) -> dict[str, str]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (doc for doc in docs if doc["kind"] in {"Deployment", "Job", "CronJob"})


def all_containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """A container's plain environment: its ConfigMaps (resolved by their rendered names) and
    its literal ``env`` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
            assert cm, f"ConfigMap {name} is not in the render"
            env.update(cm[0]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cli_options(*path: str) -> set[str]:
    """The options of a live ``clip-har`` command, e.g. ``cli_options("monitor", "drift")``."""
    import typer

    from clip_har.cli.main import app

    command: Any = typer.main.get_command(app)
    for name in path:
        assert hasattr(command, "get_command"), f"{name}: not a group"
        sub = command.get_command(command.context_class(command), name)
        assert sub is not None, f"clip-har has no command {' '.join(path)}"
        command = sub
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def queue_depth_metric() -> str:
    """The queue-depth gauge's name, as the server exports it on /metrics."""
    from clip_har.serving.metrics import NAMESPACE, ServingMetrics

    name = f"{NAMESPACE}_queue_depth"
    exported = {family.name for family in ServingMetrics().registry.collect()}
    assert name in exported, f"the server exports no {name}: {sorted(exported)}"
    return name


# --- tools: render, schema validation, checkov, yamllint ------------------------------------


def test_every_overlay_renders_the_issue_resources(app_docs: dict[str, list[Doc]]) -> None:
    for env, docs in app_docs.items():
        kinds = {doc["kind"] for doc in docs}
        assert {
            "Namespace",
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "Ingress",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HorizontalPodAutoscaler",
            "CronJob",
        } <= kinds, env
        for name in ("clip-har-api", "clip-har-ui", "clip-har-mlflow"):
            find(docs, "Deployment", name)
            find(docs, "Service", name)
        assert all(doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace")


def test_manifests_validate_against_pinned_kubernetes(rendered: dict[str, Path]) -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError
    except ImportError:
        _missing("kubernetes-validate", "pip install kubernetes-validate (the dev extra)")
    unknown: set[str] = set()
    for name in rendered:
        for doc in _docs(rendered, name):
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except SchemaNotFoundError:
                unknown.add(doc["kind"])  # a CRD: skipped on purpose, checked below
            except Exception as exc:  # ValidationError: say which document
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
    # only the CRDs we know of go unvalidated; a typo in a core kind fails
    assert unknown <= CRD_KINDS, unknown


def _checkov() -> str:
    """checkov from .venv-tools (made by deploy/k8s/tools-venv.sh, in CI on demand) or PATH."""
    if IN_CI and not (ROOT / ".venv-tools" / "bin" / "checkov").exists():
        subprocess.run(["sh", str(K8S / "tools-venv.sh")], check=True, timeout=900)
    return require_tool("checkov", "run deploy/k8s/tools-venv.sh to make .venv-tools")


def test_checkov_finds_nothing_unjustified(rendered: dict[str, Path]) -> None:
    """Open-source checkov reports no severities, so every failed check counts: each one is
    fixed or skipped in the manifest with a `checkov.io/skipN: CHECK=reason` annotation."""
    checkov = _checkov()
    done = subprocess.run(
        [checkov, "--framework", "kubernetes", "--output", "json", "--compact", "--skip-download"]
        + [arg for path in rendered.values() for arg in ("-f", str(path))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stdout.strip(), f"checkov printed nothing:\n{done.stderr[-2000:]}"
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    passed = sum(report.get("summary", {}).get("passed", 0) for report in reports)
    assert passed > 100  # it really checked the workloads
    skipped = [
        check for report in reports for check in report.get("results", {}).get("skipped_checks", [])
    ]
    # every skip says why, and only these two are skipped anywhere (a new one is a decision)
    assert all(check["check_result"].get("suppress_comment", "").strip() for check in skipped)
    assert {check["check_id"] for check in skipped} == ACCEPTED_CHECKOV_SKIPS


def test_yamllint_passes_on_the_kubernetes_manifests() -> None:
    try:
        import yamllint  # noqa: F401
    except ImportError:
        _missing("yamllint", "pip install yamllint (the dev extra)")
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-c", str(ROOT / ".yamllint"), str(K8S)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_secret_value_is_committed() -> None:
    """The Secret is generated from secrets.env, which git ignores; only the example is tracked."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "deploy/k8s"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    assert not [path for path in tracked if path.endswith("secrets.env")]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/base/app/secrets.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "deploy/k8s/base/app/secrets.env is not git-ignored"


# --- the api ------------------------------------------------------------------------------


def test_api_probes_rollout_and_drain(app_docs: dict[str, list[Doc]]) -> None:
    for env, docs in app_docs.items():
        for name in ("clip-har-api", *(["clip-har-api-gpu"] if env == "prod" else [])):
            api = find(docs, "Deployment", name)
            spec = pod_spec(api)
            (container,) = spec["containers"]
            assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
            startup = container["startupProbe"]
            assert startup["httpGet"]["path"].startswith("/v2/health/")
            # the rollout never goes below the wanted replicas
            rolling = api["spec"]["strategy"]["rollingUpdate"]
            assert api["spec"]["strategy"]["type"] == "RollingUpdate"
            assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] not in (0, "0%")
            # SIGKILL comes only after the preStop pause and the server's whole drain
            pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
            drain = float(container_env(docs, container)["CLIP_HAR_SERVE_DRAIN_GRACE_S"])
            assert pause > 0
            assert spec["terminationGracePeriodSeconds"] > pause + drain + 5, env
            # the ConfigMap binds the server where the probes and the Service look
            port = int(container_env(docs, container)["CLIP_HAR_SERVE_PORT"])
            assert container_env(docs, container)["CLIP_HAR_SERVE_HOST"] == "0.0.0.0"
            assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]


def test_api_spreads_over_nodes_and_zones(app_docs: dict[str, list[Doc]]) -> None:
    for docs in app_docs.values():
        api = find(docs, "Deployment", "clip-har-api")
        spec = pod_spec(api)
        labels = pod_labels(api)
        (term,) = spec["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert selects(term["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
        keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
        assert "topology.kubernetes.io/zone" in keys
        assert all(
            selects(c["labelSelector"]["matchLabels"], labels)
            for c in spec["topologySpreadConstraints"]
        )


def test_secrets_and_config_reach_the_api(app_docs: dict[str, list[Doc]]) -> None:
    """DATABASE_URL and the API key files come from the rendered Secret, the settings from the
    rendered ConfigMap (generated names with their hash suffix, resolved by kustomize)."""
    for docs in app_docs.values():
        secret = find(docs, "Secret", "clip-har-secrets")
        api = find(docs, "Deployment", "clip-har-api")
        (container,) = pod_spec(api)["containers"]
        (db,) = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
        assert db["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        assert db["valueFrom"]["secretKeyRef"]["key"] in secret["data"]
        env = container_env(docs, container)
        assert all(
            key.startswith("CLIP_HAR_SERVE_")
            for key in find(docs, "ConfigMap", "clip-har-serve")["data"]
        )
        volumes = {v["name"]: v for v in pod_spec(api)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        for setting in ("CLIP_HAR_SERVE_API_KEYS_FILE", "CLIP_HAR_SERVE_ADMIN_API_KEYS_FILE"):
            folder, _, file = env[setting].rpartition("/")
            keys = volumes[mounts[folder]]["secret"]
            assert keys["secretName"] == secret["metadata"]["name"]
            assert file in {item["path"] for item in keys["items"]}
        assert env["CLIP_HAR_SERVE_BUNDLE"].startswith("models:/")


def test_pod_security_everywhere(
    app_docs: dict[str, list[Doc]], job_docs: dict[str, list[Doc]]
) -> None:
    """Every pod: non-root, read-only root filesystem (with a writable /tmp), no capabilities,
    no privilege escalation, RuntimeDefault seccomp, requests and limits, no API token."""
    for docs in [*app_docs.values(), *job_docs.values()]:
        for doc in workloads(docs):
            spec = pod_spec(doc)
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            assert spec["automountServiceAccountToken"] is False, where
            empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            for container in all_containers(spec):
                security = container["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"]["drop"] == ["ALL"], where
                assert "add" not in security["capabilities"], where
                assert security["runAsNonRoot"] is True, where
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][kind]), where
                if container["name"] != "wait-for-shards":  # a shell loop that writes nothing
                    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
                    assert tmp and tmp[0]["name"] in empty_dirs, f"{where}: no writable /tmp"


def test_service_ingress_and_disruption_budget_select_the_api(
    app_docs: dict[str, list[Doc]],
) -> None:
    for docs in app_docs.values():
        api_labels = pod_labels(find(docs, "Deployment", "clip-har-api"))
        assert selects(find(docs, "Service", "clip-har-api")["spec"]["selector"], api_labels)
        pdb = find(docs, "PodDisruptionBudget", "clip-har-api")
        assert selects(pdb["spec"]["selector"]["matchLabels"], api_labels)
        assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")

        paths: dict[str, str] = {}
        public_hosts: set[str] = set()
        for ingress in (d for d in docs if d["kind"] == "Ingress"):
            hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
            public_hosts |= hosts
            tls_hosts = {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]}
            assert hosts <= tls_hosts and all(t["secretName"] for t in ingress["spec"]["tls"])
            for rule in ingress["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    service = find(docs, "Service", backend["name"])
                    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
                    prefix = re.match(r"/[a-z]+", path["path"])
                    assert prefix
                    paths[prefix.group()] = backend["name"]
        assert paths == {
            "/api": "clip-har-api",
            "/ui": "clip-har-ui",
            "/mlflow": "clip-har-mlflow",
        }
        # the apps serve under their Ingress prefix themselves
        ui = pod_spec(find(docs, "Deployment", "clip-har-ui"))["containers"][0]
        assert container_env(docs, ui)["STREAMLIT_SERVER_BASE_URL_PATH"] == "ui"
        mlflow = pod_spec(find(docs, "Deployment", "clip-har-mlflow"))["containers"][0]
        mlflow_env = container_env(docs, mlflow)
        assert mlflow_env["MLFLOW_STATIC_PREFIX"] == "/mlflow"
        assert container_env(docs, ui)["MLFLOW_TRACKING_URI"].endswith(":5000/mlflow")
        # MLflow accepts the public host (its DNS-rebinding guard refuses unknown ones)
        allowed = {h.strip() for h in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")}
        assert public_hosts and public_hosts <= allowed


def test_network_policies_deny_by_default(app_docs: dict[str, list[Doc]]) -> None:
    for docs in app_docs.values():
        deny = find(docs, "NetworkPolicy", "default-deny-all")
        assert deny["spec"]["podSelector"] == {}
        assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
        # every long-running pod has a policy of its own that lets its traffic in
        policies = [d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]]
        for name in ("clip-har-api", "clip-har-ui", "clip-har-mlflow"):
            labels = pod_labels(find(docs, "Deployment", name))
            assert any(
                selects(p["spec"]["podSelector"]["matchLabels"], labels)
                and p["spec"].get("ingress")
                for p in policies
            ), name


def test_hpa_scales_on_cpu_and_queue_depth_through_the_adapter_rule(
    app_docs: dict[str, list[Doc]],
) -> None:
    metric = queue_depth_metric()
    for docs in app_docs.values():
        hpa = find(docs, "HorizontalPodAutoscaler", "clip-har-api")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "clip-har-api",
        }
        kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert kinds["Resource"]["resource"]["name"] == "cpu"
        assert kinds["Pods"]["pods"]["metric"]["name"] == metric
        # the Deployment leaves the replica count to the HPA
        assert "replicas" not in find(docs, "Deployment", "clip-har-api")["spec"]

        adapter = find(docs, "ConfigMap", "clip-har-prometheus-adapter")
        rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
        (rule,) = [r for r in rules if metric in r["seriesQuery"]]
        assert rule["name"]["as"] == metric
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        # the api pods are scraped, with the metric on the port the server binds
        annotations = find(docs, "Deployment", "clip-har-api")["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"


def command_lines(container: Doc) -> list[list[str]]:
    """The ``clip-har`` command lines a container runs, as words from ``clip-har`` on: direct,
    under ``torchrun ... -m clip_har.cli``, or in an ``sh -c`` script."""
    words = [*container.get("command", []), *container.get("args", [])]
    if words[:2] == ["sh", "-c"]:
        script = " ".join(words[2:])
        return [
            part.split()
            for part in re.split(r"&&|;|\bdo\b|\bdone\b", script)
            if part.split()[:1] == ["clip-har"]
        ]
    if words[:1] == ["torchrun"]:
        return [["clip-har", *words[words.index("-m") + 2 :]]]
    return [words] if words[:1] == ["clip-har"] else []


def test_commands_and_options_exist_in_the_cli(
    app_docs: dict[str, list[Doc]], job_docs: dict[str, list[Doc]]
) -> None:
    """Every clip-har command line in the manifests uses a command and options the live CLI has
    (the GPU variant's format is a registered one)."""
    from clip_har.inference.formats import format_names

    seen = set()
    for docs in [*app_docs.values(), *job_docs.values()]:
        for doc in workloads(docs):
            for container in all_containers(pod_spec(doc)):
                for words in command_lines(container):
                    path = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
                    try:
                        options = cli_options(*path)
                    except AssertionError:  # the second word is an argument, not a subcommand
                        path = path[:1]
                        options = cli_options(*path)
                    used = {w.split("=")[0] for w in words if w.startswith("-")}
                    assert used <= options, f"{doc['metadata']['name']}: {used - options}"
                    seen.add(" ".join(path))
    assert {"serve", "ui", "train", "batch", "batch-merge", "monitor drift"} <= seen, seen
    gpu = find(app_docs["prod"], "Deployment", "clip-har-api-gpu")
    args = pod_spec(gpu)["containers"][0]["args"]
    assert args[args.index("--format") + 1] in format_names()


def test_prod_has_more_tighter_gpu_and_kserve(app_docs: dict[str, list[Doc]]) -> None:
    dev, prod = app_docs["dev"], app_docs["prod"]

    def min_replicas(docs: list[Doc]) -> int:
        return int(find(docs, "HorizontalPodAutoscaler", "clip-har-api")["spec"]["minReplicas"])

    assert min_replicas(prod) > min_replicas(dev) >= 1
    resources = pod_spec(find(prod, "Deployment", "clip-har-api"))["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS

    gpu = find(prod, "Deployment", "clip-har-api-gpu")
    spec = pod_spec(gpu)
    assert selects(gpu["spec"]["selector"]["matchLabels"], pod_labels(gpu))
    assert not selects(
        find(prod, "Service", "clip-har-api")["spec"]["selector"], pod_labels(gpu)
    ), "the GPU pods must not join the CPU Service"
    assert selects(find(prod, "Service", "clip-har-api-gpu")["spec"]["selector"], pod_labels(gpu))
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert int(spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for constraint in spec["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"]["matchLabels"], pod_labels(gpu))

    isvc = find(prod, "InferenceService", "clip-har")
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    runtime = find(prod, "ServingRuntime", model["runtime"])
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    (container,) = runtime["spec"]["containers"]
    api_image = pod_spec(find(prod, "Deployment", "clip-har-api"))["containers"][0]["image"]
    assert container["image"] == api_image  # the serve image, pinned like the Deployment's
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["command"] == ["clip-har", "serve"]
    assert {a for a in container["args"] if a.startswith("-")} <= cli_options("serve")
    port = container["args"][container["args"].index("--port") + 1]
    assert {"containerPort": int(port), "protocol": "TCP"} in container["ports"]
    env = container_env(prod, container)  # kustomize renamed the generated ConfigMaps here too
    assert env["CLIP_HAR_SERVE_BUNDLE"].startswith("models:/")
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_refs == {find(prod, "Secret", "clip-har-secrets")["metadata"]["name"]}


def test_images_are_pinned_and_labels_common(
    app_docs: dict[str, list[Doc]], job_docs: dict[str, list[Doc]]
) -> None:
    for docs in [*app_docs.values(), *job_docs.values()]:
        for doc in docs:
            labels = doc["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/part-of") == "clip-har", doc["metadata"]["name"]
            assert labels.get("app.kubernetes.io/managed-by") == "kustomize"
        for doc in workloads(docs):
            assert pod_labels(doc).get("app.kubernetes.io/name"), doc["metadata"]["name"]
            for container in all_containers(pod_spec(doc)):
                image = container["image"]
                name, _, tag = image.rpartition(":")
                assert name and tag and tag != "latest", image
                assert name.startswith("ghcr.io/"), image


# --- the runs -----------------------------------------------------------------------------


def test_training_is_an_indexed_torchrun_job(
    job_docs: dict[str, list[Doc]], app_docs: dict[str, list[Doc]]
) -> None:
    for env, jobs in job_docs.items():
        docs = [*jobs, *app_docs[env]]  # the runs use the app's common ConfigMap
        job = find(docs, "Job", "clip-har-train")
        assert job["spec"]["completionMode"] == "Indexed"
        spec = pod_spec(job)
        (container,) = spec["containers"]
        assert container["command"] == ["torchrun"]
        args = container["args"]
        values = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        # node rank = completion index; nnodes = the Job's pods
        assert values["--node_rank"] == "$(JOB_COMPLETION_INDEX)"
        nnodes = container_env(docs, container)[values["--nnodes"].strip("$()")]
        assert int(nnodes) == job["spec"]["completions"] == job["spec"]["parallelism"], env
        assert values["--nproc_per_node"].startswith("$(")
        # rendezvous at pod 0 through the headless Service's DNS
        service = find(docs, "Service", spec["subdomain"])
        assert service["spec"]["clusterIP"] == "None"
        assert selects(service["spec"]["selector"], pod_labels(job))
        assert values["--master_addr"] == f"{job['metadata']['name']}-0.{spec['subdomain']}"
        assert int(values["--master_port"]) in {p["port"] for p in service["spec"]["ports"]}
        assert args[args.index("-m") + 1 : args.index("-m") + 3] == ["clip_har.cli", "train"]
        assert "--distributed" in args
        assert job["spec"]["backoffLimit"] == 0
        # the app it leans on: the unhashed common ConfigMap and the data volume
        app = app_docs[env]
        for source in container["envFrom"]:
            find(app, "ConfigMap", source["configMapRef"]["name"])
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        for claim in claims:
            assert (
                "ReadWriteMany" in find(app, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
            )
    gpu = pod_spec(find(job_docs["prod"], "Job", "clip-har-train"))
    assert int(gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_batch_is_an_indexed_sharded_job_then_a_merge(
    job_docs: dict[str, list[Doc]], app_docs: dict[str, list[Doc]]
) -> None:
    for env, jobs in job_docs.items():
        docs = [*jobs, *app_docs[env]]  # the runs use the app's common ConfigMap
        job = find(docs, "Job", "clip-har-batch")
        assert job["spec"]["completionMode"] == "Indexed"
        (container,) = pod_spec(job)["containers"]
        line = " ".join(container["args"])
        env_vars = container_env(docs, container)
        shards = int(env_vars["SHARD_COUNT"])
        assert shards == job["spec"]["completions"] == job["spec"]["parallelism"], env
        assert "--shard $(JOB_COMPLETION_INDEX)/$(SHARD_COUNT)" in line
        assert "-o /out/shard-$(JOB_COMPLETION_INDEX).jsonl" in line
        assert line.startswith("clip-har batch $(BATCH_SOURCE) ")

        merge = find(docs, "Job", "clip-har-batch-merge")
        merge_spec = pod_spec(merge)
        (wait,) = merge_spec["initContainers"]
        assert "shard-*.done" in " ".join(wait["args"]) and "SHARD_COUNT" in " ".join(wait["args"])
        (merger,) = merge_spec["containers"]
        merge_line = " ".join(merger["args"])
        assert "clip-har batch-merge /out/shard-*.jsonl" in merge_line
        assert "--expect $(BATCH_SOURCE)" in merge_line

        # every pod sees the same run folder at /out
        def out_mount(container: Doc) -> str:
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/out"]
            return str(mount["subPathExpr"])

        assert out_mount(container) == out_mount(wait) == out_mount(merger)
        assert "$(BATCH_RUN)" in out_mount(container)


def test_drift_cronjob_runs_monitor_drift_on_the_service_database(
    app_docs: dict[str, list[Doc]],
) -> None:
    for docs in app_docs.values():
        cron = find(docs, "CronJob", "clip-har-drift")
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = pod_spec(cron)["containers"]
        assert container["command"] == ["clip-har", "monitor", "drift"]
        assert "--reference" in container["args"]
        (db,) = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
        secret = find(docs, "Secret", "clip-har-secrets")
        assert db["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        api = pod_spec(find(docs, "Deployment", "clip-har-api"))["containers"][0]
        (api_db,) = [e for e in api["env"] if e["name"] == "DATABASE_URL"]
        assert api_db["valueFrom"] == db["valueFrom"]  # the very log the service writes
