"""deploy/monitoring/ for real: promtool and amtool check the committed Prometheus, rules and
Alertmanager configs and run the rules' unit tests; then a real Prometheus scrapes a real
``clip-har serve``, every Grafana panel's PromQL runs against it, and an alert rule fires and
goes through a real Alertmanager to a webhook this test listens on.

The tools are Debian's ``prometheus`` (prometheus, promtool) and ``prometheus-alertmanager``
(prometheus-alertmanager or alertmanager, amtool); each test that needs one skips without it
(``.ci/run`` installs both in CI)."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import pytest
import yaml
from conftest import free_port, make_photo, stop_process_group
from feedback_server import ServeProcess
from PIL import Image

pytestmark = pytest.mark.integration

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "clip-har-serving.json"
API_JOB = "clip-har-api"
TEST_ALERT = "ClipHarHighLatencyP99"  # fires with its threshold set to 0 under any traffic
# series that exist only after an event this test does not cause: a recorded drift run
# (clip_har_drift_*), a queued image whose deadline passed
EVENT_ONLY = re.compile(r"clip_har_drift_\w+|clip_har_deadline_expired_total")
START_S = 30  # Prometheus and Alertmanager start in about a second
WAIT_S = 60  # bound on every wait for a scrape or an alert
# Grafana's built-in variables, as a dashboard of the last minutes would expand them
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "15s", "__range": "10m"}


def tool(*names: str, package: str) -> str:
    """The first of ``names`` on PATH; skip (naming the Debian package) when none is."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"{names[0]} is not installed (Debian package {package})")
    raise AssertionError("unreachable")


def promtool() -> str:
    return tool("promtool", package="prometheus")


def amtool() -> str:
    return tool("amtool", package="prometheus-alertmanager")


def check(*command: str, cwd: Path = MONITORING) -> str:
    """Run a checker; assert it exits 0 and return its standard output."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(MONITORING / "rules.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# --- the committed files, checked by the tools ------------------------------------------------
def test_prometheus_config_and_its_rules_pass_promtool_check_config() -> None:
    output = check(promtool(), "check", "config", "prometheus.yml")
    assert "SUCCESS" in output and "rules.yml" in output


def test_alert_rules_pass_promtool_check_rules() -> None:
    output = check(promtool(), "check", "rules", "rules.yml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    output = check(promtool(), "test", "rules", "rules_test.yml")
    assert "SUCCESS" in output


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    tests = load_yaml(MONITORING / "rules_test.yml")["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}
    assert names == fires == quiet
    required = {
        "ClipHarHighErrorRate", "ClipHarHighLatencyP99", "ClipHarQueueSaturated",
        "ClipHarLoadShedding", "ClipHarDataDrift", "ClipHarLowConfidence", "ClipHarNoTraffic",
    }  # fmt: skip
    assert required <= names
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_alertmanager_config_passes_amtool_check_config() -> None:
    output = check(amtool(), "check-config", "alertmanager.yml")
    assert "SUCCESS" in output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [("severity=critical", "oncall"), ("severity=warning", "team"), ("severity=info", "default")],
)
def test_alertmanager_routes_alerts_by_severity(labels: str, receiver: str) -> None:
    output = check(
        amtool(),
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        "alertname=X",
        labels,
    )
    assert output.strip() == receiver


def test_grafana_provisioning_serves_the_dashboard_from_the_prometheus_datasource() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    (provider,) = load_yaml(provisioning / "dashboards" / "clip-har.yml")["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == source["type"]
    panels = list(all_panels(dashboard))
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"


# --- the dashboard's queries ------------------------------------------------------------------
def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expand(expr: str, variables: list[str]) -> str:
    """A panel's PromQL as Grafana sends it with every variable at "All" (``.*``)."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    for name in variables:
        expr = re.sub(rf"\$\{{{name}\}}|\${name}\b|\[\[{name}\]\]", ".*", expr)
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def dashboard_queries() -> tuple[dict[str, list[str]], list[str]]:
    """``{panel title: [PromQL]}`` and the variables' own queries, all expanded."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = [v["name"] for v in variables]
    panels: dict[str, list[str]] = {}
    for panel in all_panels(dashboard):
        if panel["type"] != "row":
            assert panel["title"] not in panels, f"two panels titled {panel['title']}"
            panels[panel["title"]] = [expand(t["expr"], names) for t in panel["targets"]]
    found = [re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["definition"]) for v in variables]
    assert all(found), "every variable is a label_values(...) query"
    variable_queries = [expand(match.group(1), names) for match in found if match]
    return panels, variable_queries


# --- a real stack: clip-har serve, Prometheus, Alertmanager and a webhook ----------------------
class Webhook(ThreadingHTTPServer):
    """A receiver on 127.0.0.1 (a port of its own) that keeps every POST: (path, JSON)."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, alertname: str, timeout: float) -> tuple[str, dict[str, Any]]:
        """The first firing notification carrying ``alertname``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                path, body = self.received.get(timeout=left)
            except queue.Empty:
                break
            names = {alert["labels"].get("alertname") for alert in body.get("alerts", [])}
            if body.get("status") == "firing" and alertname in names:
                return path, body
        raise AssertionError(f"no {alertname} notification reached the webhook in {timeout}s")


class _WebhookHandler(BaseHTTPRequestHandler):
    server: Webhook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.put((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@dataclass
class Daemon:
    """A server binary in its own process group, its output in ``log``."""

    name: str
    command: list[str]
    url: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} not ready in {START_S}s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def lowered_rule() -> dict[str, Any]:
    """The committed ``TEST_ALERT`` rule, with its threshold set to 0 and no ``for``."""
    (rule,) = [dict(rule) for rule in alert_rules() if rule["alert"] == TEST_ALERT]
    expr, replaced = re.subn(r">\s*[0-9.]+\s*$", "> 0", rule["expr"].rstrip())
    assert replaced == 1, f"{TEST_ALERT} no longer ends with a '> threshold' comparison"
    return {**rule, "expr": expr, "for": "0s"}


def test_the_stack_test_fires_the_committed_latency_rule_with_threshold_0() -> None:
    committed = next(rule for rule in alert_rules() if rule["alert"] == TEST_ALERT)
    rule = lowered_rule()
    assert rule["expr"].endswith("> 0") and rule["for"] == "0s"
    unchanged = re.sub(r">\s*[0-9.]+$", "", committed["expr"].rstrip())
    assert rule["expr"].removesuffix("> 0") == unchanged
    assert rule["labels"] == committed["labels"]


def prometheus_config(folder: Path, target: str, alertmanager: str) -> Path:
    """The committed prometheus.yml with 1 s scrapes of ``target``, alerts to
    ``alertmanager`` and only the test rule (its job and the rest stay as committed)."""
    config = load_yaml(MONITORING / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == API_JOB]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [target]}])
    config["scrape_configs"] = [job]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    rules = folder / "test-rules.yml"
    group = {"name": "clip-har-test", "interval": "1s", "rules": [lowered_rule()]}
    rules.write_text(yaml.safe_dump({"groups": [group]}))
    config["rule_files"] = [str(rules)]
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(folder: Path, webhook: str) -> Path:
    """The committed alertmanager.yml with its webhooks on ``webhook`` (paths kept) and
    1 s grouping waits (its routes and receivers stay as committed)."""
    config = load_yaml(MONITORING / "alertmanager.yml")
    host = urlsplit(webhook).netloc
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = urlunsplit(urlsplit(hook["url"])._replace(netloc=host))
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s")
    path = folder / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query; asserts Prometheus accepted it."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_value(prometheus: str, expr: str, wanted: float) -> None:
    """Wait until a scrape shows ``expr`` == ``wanted``."""
    deadline = time.monotonic() + WAIT_S
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = query(prometheus, expr)
        if seen and float(seen[0]["value"][1]) == wanted:
            return
        time.sleep(0.3)
    raise AssertionError(f"{expr} did not reach {wanted} in {WAIT_S}s: {seen}")


def red_gradient(path: Path, *, vertical: bool) -> Path:
    """A black-to-red ramp: the tiny random model tends to answer another class for it than
    for the smooth colour photos, so several per-class series appear (not asserted)."""
    ramp = np.zeros((96, 96, 3), np.uint8)
    line = np.linspace(0, 255, 96, dtype=np.uint8)
    ramp[:, :, 0] = line[:, None] if vertical else line[None, :]
    Image.fromarray(ramp).save(path)
    return path


def predict_round(url: str, photos: list[Path]) -> list[str]:
    """One ``/v1/predict`` per photo; the answered top-1 labels."""
    labels = []
    for photo in photos:
        answer = httpx.post(
            f"{url}/v1/predict", files={"file": (photo.name, photo.read_bytes())}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        labels.append(answer.json()["label"])
    return labels


def test_prometheus_scrapes_the_service_every_panel_queries_and_an_alert_reaches_the_webhook(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    prometheus_bin = tool("prometheus", package="prometheus")
    alertmanager_bin = tool(
        "prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager"
    )
    panels, variable_queries = dashboard_queries()
    photos = [
        make_photo(tmp_path / f"p{seed}.jpg", (96 + 16 * seed, 80), seed=seed) for seed in range(6)
    ]
    photos += [red_gradient(tmp_path / f"red{i}.png", vertical=bool(i)) for i in range(2)]
    env = {
        "CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'serving.db'}",
        "CLIP_HAR_SERVE_MAX_UPLOAD_BYTES": str(256 * 1024),  # one oversized upload: a rejection
    }
    server = ServeProcess(tiny_onnx_bundle, free_port(), tmp_path / "serve.log", env)
    webhook = Webhook()
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    am_port, prom_port = free_port(), free_port()
    alertmanager = Daemon(
        "alertmanager",
        [
            alertmanager_bin,
            f"--config.file={alertmanager_config(tmp_path, webhook.url)}",
            f"--storage.path={tmp_path / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",  # no clustering (no gossip port)
        ],
        f"http://127.0.0.1:{am_port}",
        tmp_path / "alertmanager.log",
    )
    prom_config = prometheus_config(
        tmp_path, server.url.removeprefix("http://"), f"127.0.0.1:{am_port}"
    )
    prometheus = Daemon(
        "prometheus",
        [
            prometheus_bin,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        f"http://127.0.0.1:{prom_port}",
        tmp_path / "prometheus.log",
    )
    try:
        server.start()
        alertmanager.start()
        prometheus.start()
        prom = prometheus.url
        wait_for_value(prom, f'up{{job="{API_JOB}"}}', 1)

        # two rounds of the same photos, each seen by a scrape, so every class increases
        answered: Counter[str] = Counter()
        too_big = httpx.post(
            f"{server.url}/v1/predict", files={"file": ("big.jpg", os.urandom(300_000))}
        )
        assert too_big.status_code == 413, too_big.text
        for done in (1, 2):
            answered.update(predict_round(server.url, photos))
            wait_for_value(prom, "sum(clip_har_predictions_total)", done * len(photos))

        # Prometheus' per-class counts are exactly what the service answered
        per_class = query(prom, "sum by (label) (clip_har_predictions_total)")
        counted = {row["metric"]["label"]: float(row["value"][1]) for row in per_class}
        assert counted == {label: float(n) for label, n in answered.items()}

        # every series the dashboard and the rules name exists (or needs an event)
        names = set(httpx.get(f"{prom}/api/v1/label/__name__/values", timeout=10).json()["data"])
        text = DASHBOARD.read_text() + (MONITORING / "rules.yml").read_text()
        referenced = set(re.findall(r"\bclip_har_[a-z_]+", text))
        missing = {name for name in referenced - names if not EVENT_ONLY.fullmatch(name)}
        assert not missing, missing

        # the variables' own queries find this job and model
        for expr in variable_queries:
            assert query(prom, expr), expr
        assert {row["metric"]["job"] for row in query(prom, variable_queries[0])} == {API_JOB}

        # every panel's PromQL runs; only the drift panels may be empty (no drift run here)
        results = {title: [query(prom, expr) for expr in exprs] for title, exprs in panels.items()}
        empty = {title for title, rows in results.items() if not any(rows)}
        assert all("drift" in " ".join(panels[title]) for title in empty), empty
        (request_rate,) = results["Request rate"][0]
        assert float(request_rate["value"][1]) > 0
        shown = {
            row["metric"]["label"]: float(row["value"][1])
            for row in results["Predictions per class (time range)"][0]
        }
        assert set(shown) == set(answered) and all(value > 0 for value in shown.values())
        (rejected,) = results["Rejected by reason"][0]
        assert rejected["metric"]["reason"] == "too_large"

        # the rule fires in Prometheus, and Alertmanager routes it by severity to the webhook
        path, body = webhook.wait_for(TEST_ALERT, WAIT_S)
        assert path == "/alerts/team"  # severity=warning -> the team receiver
        (alert,) = [a for a in body["alerts"] if a["labels"]["alertname"] == TEST_ALERT]
        assert alert["labels"]["job"] == API_JOB and alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"].startswith(f"{API_JOB}: p99 prediction latency")
        firing = query(prom, f'ALERTS{{alertname="{TEST_ALERT}", alertstate="firing"}}')
        assert firing
    finally:
        prometheus.stop()
        alertmanager.stop()
        server.stop()
        webhook.shutdown()
        webhook.server_close()
    assert "Traceback" not in server.tail(), server.tail()
