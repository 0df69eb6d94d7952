#!/usr/bin/env python3
"""Tests of the Helm chart in helm/herald.

Lints the chart with Helm's own Go code (PyPI `helm-python-sdk`), renders it
with the default values, with every optional feature on, and with each
scenario file in helm/herald/ci/, validates each rendered manifest offline
against the Kubernetes OpenAPI schemas (PyPI `kubernetes-validate`; the
prometheus-operator and Gateway API CRDs have no schema there, so their
structure is checked by hand), checks values.schema.json against the keys the
real `herald` accepts, feeds the rendered config to `herald check-config`,
runs the `helm test` script against a real `herald` serving the rendered
config, and asserts the chart's invariants.

    python3 -m pip install helm-python-sdk kubernetes-validate
    python3 tests/helm/test_chart.py                  # run the tests
    python3 tests/helm/test_chart.py --update-readme  # regenerate the values table

The herald binary comes from $HERALD_BIN, or from `cargo test --no-run`
(the same debug build the `cargo test` step reuses).
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "herald"
README = CHART / "README.md"
KUBE_VERSION = "1.34.0"
RELEASE = "herald"
NAMESPACE = "notify"
SELECTOR_KEYS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/")
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
# The one value an install cannot do without: no public image exists.
IMAGE = {"image": {"repository": "registry.example.com/herald"}}
IMAGE_REQUIRED = (
    "set image.repository to the image you built and pushed; see README 'Container image'"
)
# Where the chart's default config departs from config/production.toml, and why.
CHART_DEVIATIONS: dict[str, dict[str, Any]] = {
    # /metrics off the main port, so an Ingress routing / never exposes it.
    "telemetry": {"admin_listen": "0.0.0.0:9090"},
    # History budget sized to the pod's 512Mi memory limit.
    "hub": {"max_memory_bytes": 192 * 1024 * 1024},
}
# The JWT secret `herald` runs with in the tests, as the chart's Secret gives it.
HERALD_ENV = {"HERALD_JWT_SECRET": "k" * 48}
# The Redis URL the chart passes as HERALD_BROKER__URL with the Redis broker;
# check-config only validates it, nothing connects to it.
REDIS_URL = "redis://127.0.0.1:6379/"
TABLE_START = "<!-- values-table:start -->"
TABLE_END = "<!-- values-table:end -->"

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - the message is the point
    sys.exit(
        f"tests/helm/test_chart.py needs {exc.name}: "
        "python3 -m pip install helm-python-sdk kubernetes-validate"
    )

# Every optional feature on, a separate admin listener, and an existing Secret.
FULL_VALUES: dict[str, Any] = {
    **IMAGE,
    "auth": {"existingSecret": "herald-jwt", "existingSecretKey": "secret"},
    "config": {
        "telemetry": {
            "admin_listen": "0.0.0.0:9090",
            "otlp_endpoint": "http://otel-collector:4318/v1/traces",
        },
        "auth": {"anonymous_subscribe": ["public/**"]},
        "limits": {"trusted_proxies": ["10.0.0.0/8"]},
    },
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "c1"}],
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "Herald"}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {
            "nginx.ingress.kubernetes.io/proxy-buffering": "off",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
        },
        "hosts": [{"host": "herald.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "herald-tls", "hosts": ["herald.example.com"]}],
    },
    "httpRoute": {
        "enabled": True,
        "parentRefs": [{"name": "public", "namespace": "gateway"}],
        "hostnames": ["herald.example.com"],
    },
    "networkPolicy": {
        "enabled": True,
        "httpFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
    },
    "podDisruptionBudget": {"enabled": True},
    "extraEnv": [{"name": "HERALD_LIMITS__PUBLISH_PER_SECOND", "value": "50"}],
    "podAnnotations": {"example.com/team": "notify"},
    "podLabels": {"example.com/tier": "edge"},
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_raw(values: dict[str, Any] | None, bare: bool = False) -> dict[str, str]:
    """Renders the chart with IMAGE merged under `values` (unless `bare`)."""
    values = values if bare else deep_merge(IMAGE, values or {})
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(
    values: dict[str, Any] | None = None, bare: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Renders the chart; returns the parsed documents of each template."""
    docs: dict[str, list[dict[str, Any]]] = {}
    for path, text in render_raw(values, bare).items():
        if path.endswith("NOTES.txt"):
            continue
        docs[path] = [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    out = render_raw(values)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def scenario(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def objects(docs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for ds in docs.values() for d in ds]


def one(docs: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    found = [d for d in objects(docs) if d["kind"] == kind]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, rendered {len(found)}")
    return found[0]


def kinds(docs: dict[str, list[dict[str, Any]]]) -> list[str]:
    return sorted(d["kind"] for d in objects(docs))


def container(docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def rendered_toml(docs: dict[str, list[dict[str, Any]]]) -> str:
    cms = [d for d in objects(docs) if d["kind"] == "ConfigMap" and "herald.toml" in d["data"]]
    assert len(cms) == 1, "one ConfigMap holds herald.toml"
    return cms[0]["data"]["herald.toml"]


def merged(extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(FULL_VALUES)
    out.update(extra)
    return out


def herald_binary() -> Path:
    """$HERALD_BIN, or the debug binary `cargo test` itself builds.

    `cargo test --no-run` rather than `cargo build`: dev-dependencies change
    the dependency features, so `cargo build` would compile a second copy,
    while this one is what the `cargo test` step of scripts/test.sh reuses.
    """
    if os.environ.get("HERALD_BIN"):
        return Path(os.environ["HERALD_BIN"])
    proc = subprocess.run(
        ["cargo", "test", "--no-run", "--all-targets", "--quiet", "--message-format=json"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if (
            msg.get("reason") == "compiler-artifact"
            and msg["target"]["name"] == "herald"
            and msg["target"]["kind"] == ["bin"]
            and not msg["profile"]["test"]
        ):
            return Path(msg["executable"])
    raise AssertionError("cargo did not report the herald executable")


_BINARY: Path | None = None


def binary() -> Path:
    """The herald binary, built once per run."""
    global _BINARY
    if _BINARY is None:
        _BINARY = herald_binary()
    return _BINARY


def herald_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), **HERALD_ENV, **extra}


def check_config(toml: str) -> subprocess.CompletedProcess[str]:
    """`herald check-config` on `toml`, with the env the chart's pod would have."""
    env = herald_env()
    if tomllib.loads(toml).get("broker", {}).get("kind") == "redis":
        env["HERALD_BROKER__URL"] = REDIS_URL
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(toml)
        f.flush()
        return subprocess.run(
            [str(binary()), "check-config", f.name],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def herald_keys(section: str | None) -> list[str]:
    """The keys `herald` accepts in `section` (None: the top level).

    Read from the binary itself: an unknown key makes serde list every key
    the section knows ("unknown field `x`, expected one of `a`, `b`").
    """
    probe = "zz_not_a_key = 1\n" if section is None else f"[{section}]\nzz_not_a_key = 1\n"
    proc = check_config(probe)
    # "expected one of `a`, `b`", or "expected `a`" for a one-key section.
    match = re.search(
        r"unknown field `zz_not_a_key`, expected (?:one of )?(.*?)(?: for key|$)", proc.stderr, re.M
    )
    if not match:
        raise AssertionError(f"herald did not list the keys of [{section}]: {proc.stderr}")
    return re.findall(r"`([a-z_]+)`", match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Herald:
    """A real `herald serve` on loopback ports with a rendered config."""

    def __init__(self, toml: str, **env: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self._file = tempfile.NamedTemporaryFile("w", suffix=".toml")
        self._file.write(toml)
        self._file.flush()
        self._log = tempfile.TemporaryFile("w+")
        # The rendered listen addresses are 0.0.0.0; tests stay on loopback.
        self.proc = subprocess.Popen(
            [str(binary()), "serve", "--config", self._file.name],
            env=herald_env(
                HERALD_LISTEN=f"127.0.0.1:{self.port}",
                HERALD_TELEMETRY__ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
                **env,
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while self.get(self.port, "/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.close()
                raise AssertionError(f"herald did not become ready:\n{log}")
            time.sleep(0.1)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read()

    @staticmethod
    def get(port: int, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            return res.status, res.read().decode(errors="replace")
        except OSError as err:
            return 0, str(err)
        finally:
            conn.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        self._log.close()

    def __enter__(self) -> "Herald":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- values.yaml documentation (helm-docs conventions) -----------------------


def documented_values(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Returns ([(key path, description)], [undocumented key paths]).

    A key is documented by a `# --` comment block right above it (helm-docs'
    rule). A documented map whose keys carry no `# --` of their own is
    documented whole (e.g. `resources`); once one of its keys has a `# --`,
    every key below it needs one (e.g. `config`). An undocumented map needs
    documented keys.
    """
    keys: list[tuple[str, str | None]] = []  # (path, description), in file order
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing maps
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        match = re.match(r"([A-Za-z0-9_.\-/]+):(\s.*)?$", stripped)
        if stripped.startswith("-") or not match:
            comment = []
            continue
        key, rest = match.group(1), (match.group(2) or "").strip()
        path = ".".join([k for _, k in stack] + [key])
        desc = None
        for i, c in enumerate(comment):
            if c.startswith("# --"):
                parts = [c[4:].strip()] + [x.lstrip("#").strip() for x in comment[i + 1 :]]
                desc = " ".join(p for p in parts if p)
                break
        comment = []
        keys.append((path, desc))
        if rest == "" or rest.startswith("#"):
            stack.append((indent, key))

    documented = {p for p, d in keys if d is not None}

    def below(path: str) -> list[str]:
        return [p for p, _ in keys if p.startswith(path + ".")]

    undocumented = []
    for path, desc in keys:
        if desc is not None:
            continue
        if any(p in documented for p in below(path)):
            continue  # a map whose keys are documented
        ancestors = [path.rsplit(".", n)[0] for n in range(1, path.count(".") + 1)]
        whole = [a for a in ancestors if a in documented and not documented & set(below(a))]
        if not whole:
            undocumented.append(path)
    rows = [(p, d) for p, d in keys if d is not None]
    return rows, undocumented


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "string"
    return "object"


def values_table() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows, _ = documented_values(text)
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    paths = [p for p, _ in rows]
    for path, desc in rows:
        value = lookup(values, path)
        default = json.dumps(value, separators=(",", ":"))
        if any(p.startswith(path + ".") for p in paths):
            default = "{...}"  # its keys have rows of their own
        default, desc = default.replace("|", "\\|"), desc.replace("|", "\\|")
        lines.append(f"| {path} | {type_name(value)} | `{default}` | {desc} |")
    return "\n".join(lines)


def readme_with_table() -> str:
    text = README.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    return text[: start + len(TABLE_START)] + "\n" + values_table() + "\n" + text[end:]


# --- the tests ---------------------------------------------------------------


class ChartTest(unittest.TestCase):
    default: dict[str, list[dict[str, Any]]]
    full: dict[str, list[dict[str, Any]]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.default = render()
        cls.full = render(FULL_VALUES)

    # Helm lint and rendering.

    def test_lint_is_clean_with_default_and_full_values(self) -> None:
        for name, values in (("default", IMAGE), ("full", FULL_VALUES)):
            report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
            self.assertEqual(report["errors"], [], f"{name}: {report}")
            serious = [m for m in report["messages"] if m["severity"] >= 2]
            self.assertEqual(serious, [], f"{name}: lint warnings or errors")

    def test_default_render_has_the_core_objects_only(self) -> None:
        self.assertEqual(
            kinds(self.default),
            ["ConfigMap", "Deployment", "Pod", "Secret", "Service", "ServiceAccount"],
        )

    def test_full_render_has_every_optional_object(self) -> None:
        self.assertEqual(
            kinds(self.full),
            [
                "ConfigMap",
                "ConfigMap",
                "Deployment",
                "HTTPRoute",
                "Ingress",
                "NetworkPolicy",
                "Pod",
                "PodDisruptionBudget",
                "PrometheusRule",
                "Service",
                "ServiceAccount",
                "ServiceMonitor",
            ],
        )

    def test_notes_render_and_name_the_secret(self) -> None:
        self.assertIn("get secret herald -o jsonpath", notes())
        self.assertIn("https://herald.example.com/", notes(FULL_VALUES))
        self.assertIn("get secret herald-jwt", notes(FULL_VALUES))

    # Schemas.

    def test_every_builtin_manifest_matches_the_kubernetes_schema(self) -> None:
        checked = 0
        for name, docs in (("default", self.default), ("full", self.full)):
            for doc in objects(docs):
                if doc["apiVersion"].startswith(CRD_GROUPS):
                    continue
                with self.subTest(render=name, kind=doc["kind"]):
                    try:
                        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        path = ".".join(str(p) for p in e.path)
                        self.fail(f"{doc['kind']} {path}: {e.message}")
                    checked += 1
        self.assertGreaterEqual(checked, 15)

    def test_service_monitor_structure(self) -> None:
        sm = one(self.full, "ServiceMonitor")
        self.assertEqual(sm["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(sm["metadata"]["namespace"], NAMESPACE)
        self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus-stack")
        spec = sm["spec"]
        self.assertEqual(set(spec), {"jobLabel", "namespaceSelector", "selector", "endpoints"})
        self.assertEqual(spec["jobLabel"], "app.kubernetes.io/name")
        self.assertEqual(spec["namespaceSelector"], {"matchNames": [NAMESPACE]})
        service = one(self.full, "Service")
        self.assertEqual(spec["selector"]["matchLabels"], service["spec"]["selector"])
        (endpoint,) = spec["endpoints"]
        self.assertEqual(endpoint["port"], "metrics")
        self.assertIn("metrics", [p["name"] for p in service["spec"]["ports"]])
        self.assertEqual(endpoint["path"], "/metrics")
        self.assertRegex(endpoint["interval"], r"^\d+[smh]$")
        self.assertRegex(endpoint["scrapeTimeout"], r"^\d+[smh]$")
        self.assertEqual(endpoint["relabelings"][0]["targetLabel"], "cluster")
        # The default scrapes the admin port; without an admin listener, the main one.
        sm = one(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "metrics")
        sm = one(
            render(
                {
                    "serviceMonitor": {"enabled": True},
                    "config": {"telemetry": {"admin_listen": None}},
                }
            ),
            "ServiceMonitor",
        )
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "http")

    def test_prometheus_rule_wraps_the_alert_file(self) -> None:
        rule = one(self.full, "PrometheusRule")
        self.assertEqual(rule["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus-stack")
        self.assertEqual(set(rule["spec"]), {"groups"})
        # The alert file as is, but for its job matcher, narrowed to this release.
        text = (ROOT / "dashboards" / "herald-alerts.yaml").read_text()
        selector = f'job="herald", namespace="{NAMESPACE}", service="{RELEASE}"'
        source = yaml.safe_load(text.replace('job=~".*herald.*"', selector))
        self.assertEqual(rule["spec"]["groups"], source["groups"])
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        self.assertGreaterEqual(len(alerts), 1)
        for r in alerts:
            self.assertTrue(r["alert"].startswith("Herald"), r)
            self.assertIsInstance(r["expr"], str)
            self.assertIn(r["labels"]["severity"], {"warning", "critical"})
            self.assertIn("summary", r["annotations"])
        # Every rule selects this release's targets, as the ServiceMonitor labels them.
        for r in alerts:
            self.assertIn(selector, r["expr"], r["alert"])
            self.assertNotIn(".*herald.*", r["expr"], r["alert"])
            self.assertRegex(r["annotations"].get("runbook_url", ""), r"RUNBOOK\.md#", r["alert"])

    def test_dashboards_config_map(self) -> None:
        cm = [d for d in objects(self.full) if d["metadata"]["name"] == "herald-dashboards"][0]
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(cm["metadata"]["annotations"], {"grafana_folder": "Herald"})
        sources = sorted((ROOT / "dashboards").glob("*.json"))
        self.assertGreaterEqual(len(sources), 1)
        self.assertEqual(sorted(cm["data"]), [p.name for p in sources])
        for path in sources:
            self.assertEqual(cm["data"][path.name], path.read_text(), path.name)
            json.loads(cm["data"][path.name])

    # Copies kept inside the chart.

    def test_chart_copies_are_identical_to_dashboards(self) -> None:
        fix = "cp dashboards/{0} helm/herald/files/{1}"
        alerts = ROOT / "dashboards" / "herald-alerts.yaml"
        copy_ = CHART / "files" / "herald-alerts.yaml"
        self.assertEqual(
            copy_.read_bytes(), alerts.read_bytes(), fix.format(alerts.name, alerts.name)
        )
        sources = {p.name: p for p in (ROOT / "dashboards").glob("*.json")}
        copies = {p.name: p for p in (CHART / "files" / "dashboards").glob("*.json")}
        self.assertEqual(sorted(copies), sorted(sources), "files/dashboards/ holds every dashboard")
        for name, src in sources.items():
            self.assertEqual(
                copies[name].read_bytes(),
                src.read_bytes(),
                fix.format(name, "dashboards/" + name),
            )

    # Labels and selectors.

    def test_selectors_use_only_name_and_instance(self) -> None:
        for docs in (self.default, self.full):
            deploy = one(docs, "Deployment")
            selector = deploy["spec"]["selector"]["matchLabels"]
            self.assertEqual(set(selector), SELECTOR_KEYS)
            self.assertEqual(selector["app.kubernetes.io/instance"], RELEASE)
            self.assertEqual(selector["app.kubernetes.io/name"], "herald")
            pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
            self.assertLessEqual(selector.items(), pod_labels.items())
            self.assertEqual(one(docs, "Service")["spec"]["selector"], selector)
        self.assertEqual(
            one(self.full, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            one(self.full, "Deployment")["spec"]["selector"]["matchLabels"],
        )
        self.assertEqual(
            one(self.full, "Deployment")["spec"]["template"]["metadata"]["labels"][
                "example.com/tier"
            ],
            "edge",
        )

    def test_every_object_carries_the_standard_labels(self) -> None:
        for doc in objects(self.full):
            labels = doc["metadata"]["labels"]
            with self.subTest(kind=doc["kind"], name=doc["metadata"]["name"]):
                for key in (
                    "helm.sh/chart",
                    "app.kubernetes.io/name",
                    "app.kubernetes.io/instance",
                    "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by",
                ):
                    self.assertIn(key, labels)
                self.assertEqual(labels["app.kubernetes.io/version"], "0.1.0")
                self.assertEqual(doc["metadata"]["namespace"], NAMESPACE)

    # The pod.

    def test_checksum_annotation_follows_the_config(self) -> None:
        def checksum(docs: dict[str, list[dict[str, Any]]]) -> str:
            meta = one(docs, "Deployment")["spec"]["template"]["metadata"]
            return meta["annotations"]["checksum/config"]

        base = checksum(self.default)
        self.assertRegex(base, r"^[0-9a-f]{64}$")
        self.assertEqual(checksum(render()), base, "stable across renders")
        self.assertNotEqual(checksum(render({"config": {"hub": {"ring_size": 2048}}})), base)
        self.assertEqual(checksum(render({"podAnnotations": {"a": "b"}})), base)

    def test_security_context_is_locked_down(self) -> None:
        for docs in (self.default, self.full):
            pod = one(docs, "Deployment")["spec"]["template"]["spec"]
            self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
            self.assertEqual(pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
            self.assertNotEqual(pod["securityContext"].get("runAsUser"), 0)
            self.assertIs(pod["automountServiceAccountToken"], False)
            self.assertIs(pod["enableServiceLinks"], False, "HERALD_* service env breaks config")
            self.assertNotIn("hostNetwork", pod)
            sc = container(docs)["securityContext"]
            self.assertIs(sc["runAsNonRoot"], True)
            self.assertIs(sc["readOnlyRootFilesystem"], True)
            self.assertIs(sc["allowPrivilegeEscalation"], False)
            self.assertIs(sc.get("privileged", False), False)
            self.assertEqual(sc["capabilities"], {"drop": ["ALL"]})
            self.assertEqual(sc["seccompProfile"], {"type": "RuntimeDefault"})

    def test_resources_have_defaults(self) -> None:
        res = container(self.default)["resources"]
        self.assertIn("cpu", res["requests"])
        self.assertIn("memory", res["requests"])
        self.assertIn("memory", res["limits"])

    def test_probes_hit_healthz_and_readyz(self) -> None:
        for docs in (self.default, self.full):
            c = container(docs)
            self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "http"})
            self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "http"})
            self.assertIn("http", [p["name"] for p in c["ports"]])

    def test_termination_outlasts_prestop_and_drain(self) -> None:
        for docs in (self.default, self.full):
            pod = one(docs, "Deployment")["spec"]["template"]["spec"]
            grace = tomllib.loads(rendered_toml(docs))["shutdown"]["grace_secs"]
            sleep = container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
            self.assertGreater(sleep, 0)
            self.assertGreater(pod["terminationGracePeriodSeconds"], sleep + grace)
        with self.assertRaisesRegex(helm.HelmError, "terminationGracePeriodSeconds"):
            render({"terminationGracePeriodSeconds": 25})
        with self.assertRaisesRegex(helm.HelmError, "terminationGracePeriodSeconds"):
            render({"config": {"shutdown": {"grace_secs": 60}}})

    def test_single_replica_is_enforced(self) -> None:
        self.assertEqual(one(self.default, "Deployment")["spec"]["replicas"], 1)
        with self.assertRaisesRegex(helm.HelmError, "in-memory broker"):
            render({"replicaCount": 2})
        with self.assertRaisesRegex(helm.HelmError, "in-memory broker"):
            render({"replicaCount": 3, "broker": {"kind": "memory"}})

    def test_command_and_config_mount(self) -> None:
        c = container(self.default)
        self.assertEqual(c["command"], ["herald"])
        self.assertEqual(c["args"], ["serve", "--config", "/etc/herald/herald.toml"])
        mount = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/herald"][0]
        self.assertIs(mount["readOnly"], True)
        volume = [
            v
            for v in one(self.default, "Deployment")["spec"]["template"]["spec"]["volumes"]
            if v["name"] == mount["name"]
        ][0]
        self.assertEqual(volume["configMap"]["name"], "herald")
        extra = container(self.full)["env"][1]
        self.assertEqual(extra["name"], "HERALD_LIMITS__PUBLISH_PER_SECOND")

    # The configuration.

    def test_default_config_is_config_production_toml(self) -> None:
        rendered = tomllib.loads(rendered_toml(self.default))
        production = tomllib.loads((ROOT / "config" / "production.toml").read_text())
        for section, keys in CHART_DEVIATIONS.items():
            for key, value in keys.items():
                self.assertNotIn(key, production[section], "a deviation is no longer one")
                self.assertEqual(rendered[section].pop(key), value, f"{section}.{key}")
        self.assertEqual(
            rendered, production, "values.yaml config: must mirror config/production.toml"
        )
        self.assertRegex(rendered_toml(self.default), r"(?m)^\s*production = true$")
        self.assertIsInstance(rendered["hub"]["ring_size"], int, "integers stay integers")
        self.assertIsInstance(rendered["telemetry"]["sampling_ratio"], float)

    def test_config_overrides_merge_over_defaults(self) -> None:
        cfg = tomllib.loads(rendered_toml(self.full))
        self.assertEqual(cfg["telemetry"]["admin_listen"], "0.0.0.0:9090")
        self.assertEqual(cfg["auth"]["anonymous_subscribe"], ["public/**"])
        self.assertIs(cfg["auth"]["production"], True, "untouched defaults survive the merge")
        self.assertEqual(cfg["hub"]["ring_size"], 1024)
        self.assertEqual(
            tomllib.loads(rendered_toml(self.default))["telemetry"]["admin_listen"], "0.0.0.0:9090"
        )
        dropped = render({"config": {"telemetry": {"admin_listen": None}}})
        self.assertNotIn("admin_listen", tomllib.loads(rendered_toml(dropped))["telemetry"])

    def test_ports_follow_the_listen_addresses(self) -> None:
        ports = {p["name"]: p["containerPort"] for p in container(self.full)["ports"]}
        self.assertEqual(ports, {"http": 8000, "metrics": 9090})
        docs = render({"config": {"listen": "[::]:8080", "telemetry": {"admin_listen": None}}})
        self.assertEqual(
            container(docs)["ports"], [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        )
        self.assertEqual(one(docs, "Service")["spec"]["ports"][0]["targetPort"], "http")

    def test_secrets_never_go_into_the_config_map(self) -> None:
        with self.assertRaisesRegex(helm.HelmError, "do not belong in a ConfigMap"):
            render({"config": {"auth": {"hs_secret": "x" * 40}}})

    def test_herald_accepts_the_rendered_config(self) -> None:
        for name, docs in (("default", self.default), ("full", self.full)):
            proc = check_config(rendered_toml(docs))
            self.assertEqual(proc.returncode, 0, f"{name}: {proc.stderr}")
        # The check has teeth: a key Herald does not know is refused. (The
        # schema now stops `config.hub.ring_siz` before rendering, so the
        # typo goes into the rendered TOML directly.)
        toml = rendered_toml(self.default).replace("[hub]\n", "[hub]\n  ring_siz = 3\n")
        self.assertIn("ring_siz", toml)
        proc = check_config(toml)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("ring_siz", proc.stderr)

    # The JWT secret.

    def test_generated_secret_is_long_enough(self) -> None:
        secret = one(self.default, "Secret")
        value = base64.b64decode(secret["data"]["jwt-secret"])
        self.assertGreaterEqual(len(value), 32)
        ref = container(self.default)["env"][0]
        self.assertEqual(ref["name"], "HERALD_JWT_SECRET")
        self.assertEqual(ref["valueFrom"]["secretKeyRef"], {"name": "herald", "key": "jwt-secret"})

    def test_given_secret_is_used_and_rolls_the_pods(self) -> None:
        docs = render({"auth": {"jwtSecret": "s" * 40}})
        self.assertEqual(base64.b64decode(one(docs, "Secret")["data"]["jwt-secret"]), b"s" * 40)
        meta = one(docs, "Deployment")["spec"]["template"]["metadata"]
        self.assertRegex(meta["annotations"]["checksum/secret"], r"^[0-9a-f]{64}$")
        with self.assertRaisesRegex(helm.HelmError, "at least 32 bytes"):
            render({"auth": {"jwtSecret": "short"}})

    def test_existing_secret_replaces_the_chart_secret(self) -> None:
        self.assertNotIn("Secret", kinds(self.full))
        ref = container(self.full)["env"][0]["valueFrom"]["secretKeyRef"]
        self.assertEqual(ref, {"name": "herald-jwt", "key": "secret"})

    # Ingress.

    def test_ingress_routes_to_the_service(self) -> None:
        ing = one(self.full, "Ingress")
        self.assertEqual(ing["spec"]["ingressClassName"], "nginx")
        self.assertEqual(
            ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"], "off"
        )
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        service = one(self.full, "Service")
        self.assertEqual(backend["name"], service["metadata"]["name"])
        http = [p for p in service["spec"]["ports"] if p["name"] == "http"][0]
        self.assertEqual(backend["port"]["number"], http["port"])
        self.assertEqual(ing["spec"]["tls"][0]["secretName"], "herald-tls")

    # The image.

    def test_render_without_image_repository_fails_clearly(self) -> None:
        with self.assertRaises(helm.HelmError) as caught:
            render(None, bare=True)
        self.assertIn(IMAGE_REQUIRED, str(caught.exception))
        readme = README.read_text()
        self.assertIn("## Container image", readme)
        self.assertRegex(readme, r"docker build -t \S+/herald:0\.1\.0 \.")
        self.assertRegex(readme, r"docker push \S+/herald:0\.1\.0")
        self.assertEqual(container(self.default)["image"], "registry.example.com/herald:0.1.0")

    # values.schema.json.

    def test_schema_rejects_typos_and_unknown_keys(self) -> None:
        for values, needle in (
            ({"config": {"hub": {"ring_siz": 3}}}, "ring_siz"),
            ({"config": {"telemtry": {}}}, "telemtry"),
            ({"replicaCont": 2}, "replicaCont"),
            ({"ingress": {"enabeld": True}}, "enabeld"),
            ({"broker": {"kind": "postgres"}}, "kind"),
            ({"serviceMonitor": {"interval": "30 seconds"}}, "interval"),
            ({"replicaCount": "3"}, "replicaCount"),
            ({"tests": {"image": {"tagg": "x"}}}, "tagg"),
        ):
            with self.subTest(values=values):
                with self.assertRaisesRegex(helm.HelmError, "schema") as caught:
                    render(values)
                self.assertIn(needle, str(caught.exception))
        report = helm.lint(CHART, deep_merge(IMAGE, {"config": {"sse": {"heartbeat": 5}}}))
        self.assertTrue(any("heartbeat" in str(m) for m in report["messages"]), report)

    def test_schema_config_keys_are_the_keys_herald_accepts(self) -> None:
        """values.schema.json's `config` mirrors Herald: the same sections, the same keys."""
        schema = json.loads((CHART / "values.schema.json").read_text())
        config = schema["properties"]["config"]
        self.assertIs(config["additionalProperties"], False)
        self.assertEqual(sorted(config["properties"]), sorted(herald_keys(None)))
        for name, prop in config["properties"].items():
            if "properties" not in prop:
                continue
            with self.subTest(section=name):
                self.assertIs(prop["additionalProperties"], False)
                self.assertEqual(sorted(prop["properties"]), sorted(herald_keys(name)))

    def test_schema_closes_every_object_it_describes(self) -> None:
        def walk(node: dict[str, Any], path: str) -> None:
            if "properties" in node:
                self.assertIs(node.get("additionalProperties"), False, path)
                for key, child in node["properties"].items():
                    walk(child, f"{path}.{key}")
            if isinstance(node.get("items"), dict):
                walk(node["items"], path + "[]")

        walk(json.loads((CHART / "values.schema.json").read_text()), "values")

    # Scenario values files.

    def test_scenarios_lint_render_and_validate(self) -> None:
        self.assertEqual(
            [p.name for p in SCENARIOS],
            [
                "ingress-monitoring-values.yaml",
                "minimal-values.yaml",
                "production-redis-values.yaml",
            ],
        )
        for path in SCENARIOS:
            values = scenario(path)
            with self.subTest(scenario=path.name):
                report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
                self.assertEqual(report["errors"], [], report)
                self.assertEqual([m for m in report["messages"] if m["severity"] >= 2], [])
                docs = render(values, bare=True)
                validated = 0
                for doc in objects(docs):
                    if doc["apiVersion"].startswith(CRD_GROUPS):
                        continue
                    try:
                        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        where = ".".join(str(p) for p in e.path)
                        self.fail(f"{path.name}: {doc['kind']} {where}: {e.message}")
                    validated += 1
                self.assertGreaterEqual(validated, 5)
                proc = check_config(rendered_toml(docs))
                self.assertEqual(proc.returncode, 0, f"{path.name}: {proc.stderr}")

    def test_scenarios_hold_what_their_names_promise(self) -> None:
        minimal = render(scenario(CHART / "ci" / "minimal-values.yaml"), bare=True)
        self.assertEqual(one(minimal, "Deployment")["spec"]["strategy"], {"type": "Recreate"})

        prod = render(scenario(CHART / "ci" / "production-redis-values.yaml"), bare=True)
        deploy = one(prod, "Deployment")
        self.assertEqual(deploy["spec"]["replicas"], 3)
        self.assertEqual(deploy["spec"]["strategy"]["type"], "RollingUpdate")
        self.assertEqual(tomllib.loads(rendered_toml(prod))["broker"]["kind"], "redis")
        self.assertIn("HTTPRoute", kinds(prod))
        self.assertIn("NetworkPolicy", kinds(prod))
        self.assertNotIn("Secret", kinds(prod), "both secrets are the operator's own")

        monitored = render(scenario(CHART / "ci" / "ingress-monitoring-values.yaml"), bare=True)
        for kind in ("Ingress", "ServiceMonitor", "PrometheusRule"):
            self.assertIn(kind, kinds(monitored))
        self.assertEqual(
            tomllib.loads(rendered_toml(monitored))["limits"]["trusted_proxies"], ["10.0.0.0/8"]
        )

    # Brokers and replicas.

    def test_memory_broker_recreates_and_renders_no_broker_section(self) -> None:
        deploy = one(self.default, "Deployment")
        self.assertEqual(deploy["spec"]["strategy"], {"type": "Recreate"})
        names = [e["name"] for e in container(self.default)["env"]]
        self.assertNotIn("HERALD_BROKER__URL", names)
        self.assertNotIn("broker", tomllib.loads(rendered_toml(self.default)))
        # Pass-through keys render with the kind.
        docs = render({"config": {"broker": {"key_prefix": "h1"}}})
        self.assertEqual(
            tomllib.loads(rendered_toml(docs))["broker"], {"kind": "memory", "key_prefix": "h1"}
        )

    def test_redis_broker_lifts_the_one_replica_rule(self) -> None:
        values = {
            "replicaCount": 3,
            "broker": {
                "kind": "redis",
                "existingSecret": "herald-redis",
                "existingSecretKey": "url",
            },
            "config": {"broker": {"key_prefix": "prod", "command_timeout_ms": 800}},
        }
        docs = render(values)
        deploy = one(docs, "Deployment")
        self.assertEqual(deploy["spec"]["replicas"], 3)
        self.assertEqual(
            deploy["spec"]["strategy"],
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        )
        env = {e["name"]: e for e in container(docs)["env"]}
        self.assertEqual(
            env["HERALD_BROKER__URL"]["valueFrom"]["secretKeyRef"],
            {"name": "herald-redis", "key": "url"},
        )
        cfg = tomllib.loads(rendered_toml(docs))
        self.assertEqual(
            cfg["broker"], {"kind": "redis", "key_prefix": "prod", "command_timeout_ms": 800}
        )
        proc = check_config(rendered_toml(docs))
        self.assertEqual(proc.returncode, 0, proc.stderr)

    def test_redis_url_goes_to_a_secret_never_the_config_map(self) -> None:
        url = "rediss://:hunter2-password@redis.example.com:6380/0"
        docs = render({"replicaCount": 2, "broker": {"kind": "redis", "url": url}})
        secret = [d for d in objects(docs) if d["metadata"]["name"] == "herald-broker"][0]
        self.assertEqual(base64.b64decode(secret["data"]["redis-url"]).decode(), url)
        env = {e["name"]: e for e in container(docs)["env"]}
        self.assertEqual(
            env["HERALD_BROKER__URL"]["valueFrom"]["secretKeyRef"],
            {"name": "herald-broker", "key": "redis-url"},
        )
        self.assertNotIn("hunter2", rendered_toml(docs))
        meta = one(docs, "Deployment")["spec"]["template"]["metadata"]
        self.assertRegex(meta["annotations"]["checksum/broker"], r"^[0-9a-f]{64}$")
        with self.assertRaisesRegex(helm.HelmError, "does not belong in a ConfigMap"):
            render({"broker": {"kind": "redis", "url": url}, "config": {"broker": {"url": url}}})
        with self.assertRaisesRegex(helm.HelmError, "set broker.kind, not config.broker.kind"):
            render({"config": {"broker": {"kind": "redis"}}})
        with self.assertRaisesRegex(helm.HelmError, "needs the Redis URL"):
            render({"broker": {"kind": "redis"}})

    def test_pod_disruption_budget_never_blocks_drains(self) -> None:
        pdb = one(render({"podDisruptionBudget": {"enabled": True}}), "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
        with self.assertRaisesRegex(helm.HelmError, "node drains hang"):
            render({"podDisruptionBudget": {"enabled": True, "minAvailable": 1}})
        redis = {"replicaCount": 3, "broker": {"kind": "redis", "existingSecret": "r"}}
        pdb = one(
            render({**redis, "podDisruptionBudget": {"enabled": True, "minAvailable": 2}}),
            "PodDisruptionBudget",
        )
        self.assertEqual(pdb["spec"]["minAvailable"], 2)
        with self.assertRaisesRegex(helm.HelmError, "node drains hang"):
            render({**redis, "podDisruptionBudget": {"enabled": True, "minAvailable": 3}})

    # Metrics, Ingress, HTTPRoute, trusted proxies.

    def test_metrics_are_never_on_the_ingress_path(self) -> None:
        for name, path in (("full", None), *((p.name, p) for p in SCENARIOS)):
            docs = self.full if path is None else render(scenario(path), bare=True)
            service = one(docs, "Service")
            http_port = [p for p in service["spec"]["ports"] if p["name"] == "http"][0]["port"]
            metrics = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
            with self.subTest(values=name):
                self.assertEqual(len(metrics), 1, "/metrics has a port of its own")
                self.assertNotEqual(metrics[0]["port"], http_port)
                for ing in [d for d in objects(docs) if d["kind"] == "Ingress"]:
                    for rule in ing["spec"]["rules"]:
                        for p in rule["http"]["paths"]:
                            self.assertEqual(p["backend"]["service"]["port"], {"number": http_port})
                for route in [d for d in objects(docs) if d["kind"] == "HTTPRoute"]:
                    for rule in route["spec"]["rules"]:
                        for ref in rule["backendRefs"]:
                            self.assertEqual(ref["port"], http_port)
                cfg = tomllib.loads(rendered_toml(docs))
                self.assertTrue(cfg["telemetry"]["admin_listen"])
                sm = [d for d in objects(docs) if d["kind"] == "ServiceMonitor"]
                for monitor in sm:
                    self.assertEqual(monitor["spec"]["endpoints"][0]["port"], "metrics")
        # /metrics back on the main port while something routes it: refused.
        for route in (
            {"ingress": {"enabled": True}},
            {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
        ):
            with self.assertRaisesRegex(helm.HelmError, "off the public path"):
                render(
                    {
                        **route,
                        "trustedProxies": ["10.0.0.0/8"],
                        "config": {"telemetry": {"admin_listen": None}},
                    }
                )
        render(
            {
                "ingress": {"enabled": True},
                "trustedProxies": ["10.0.0.0/8"],
                "config": {"telemetry": {"admin_listen": None, "metrics_enabled": False}},
            }
        )

    def test_real_herald_serves_no_metrics_on_the_routed_port(self) -> None:
        """The ingress scenario's config, served: /metrics 404 where the Ingress points."""
        docs = render(scenario(CHART / "ci" / "ingress-monitoring-values.yaml"), bare=True)
        with Herald(rendered_toml(docs)) as herald:
            status, body = herald.get(herald.port, "/metrics")
            self.assertEqual(status, 404, body)
            status, body = herald.get(herald.admin_port, "/metrics")
            self.assertEqual(status, 200)
            self.assertIn("herald_build_info", body)
            self.assertEqual(herald.get(herald.port, "/readyz")[0], 200, "probes use the main port")

    def test_trusted_proxies_are_required_with_a_route(self) -> None:
        for route in (
            {"ingress": {"enabled": True}},
            {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}},
        ):
            with self.subTest(route=route):
                with self.assertRaisesRegex(helm.HelmError, "trustedProxies") as caught:
                    render(route)
                self.assertIn("max_streams_per_ip", str(caught.exception))
                docs = render({**route, "trustedProxies": ["10.0.0.0/8", "fd00::/8"]})
                cfg = tomllib.loads(rendered_toml(docs))
                self.assertEqual(cfg["limits"]["trusted_proxies"], ["10.0.0.0/8", "fd00::/8"])
        # Merged with (after) config.limits.trusted_proxies, without duplicates.
        docs = render(
            {
                "trustedProxies": ["10.0.0.0/8", "192.168.0.0/16"],
                "config": {"limits": {"trusted_proxies": ["192.168.0.0/16"]}},
            }
        )
        self.assertEqual(
            tomllib.loads(rendered_toml(docs))["limits"]["trusted_proxies"],
            ["192.168.0.0/16", "10.0.0.0/8"],
        )
        with self.assertRaisesRegex(helm.HelmError, "parentRefs"):
            render({"httpRoute": {"enabled": True}, "trustedProxies": ["10.0.0.0/8"]})

    def test_http_route_structure(self) -> None:
        route = one(self.full, "HTTPRoute")
        self.assertEqual(route["apiVersion"], "gateway.networking.k8s.io/v1")
        self.assertEqual(route["spec"]["parentRefs"], [{"name": "public", "namespace": "gateway"}])
        self.assertEqual(route["spec"]["hostnames"], ["herald.example.com"])
        (rule,) = route["spec"]["rules"]
        self.assertEqual(rule["matches"], [{"path": {"type": "PathPrefix", "value": "/"}}])
        self.assertEqual(rule["backendRefs"], [{"name": "herald", "port": 8000}])

    def test_network_policy_admits_the_two_ports(self) -> None:
        policy = one(self.full, "NetworkPolicy")
        self.assertEqual(
            policy["spec"]["podSelector"]["matchLabels"],
            one(self.full, "Service")["spec"]["selector"],
        )
        self.assertEqual(policy["spec"]["policyTypes"], ["Ingress"])
        http_rule, metrics_rule = policy["spec"]["ingress"]
        self.assertEqual(http_rule["ports"], [{"port": "http", "protocol": "TCP"}])
        self.assertEqual(metrics_rule["ports"], [{"port": "metrics", "protocol": "TCP"}])
        test_pod = one(self.full, "Pod")["metadata"]["labels"]
        peers = [p["podSelector"]["matchLabels"] for p in http_rule["from"] if "podSelector" in p]
        self.assertEqual(len(peers), 1, "the helm test pod may reach the main port")
        self.assertLessEqual(peers[0].items(), test_pod.items())
        self.assertEqual(
            metrics_rule["from"][0]["namespaceSelector"]["matchLabels"], {"name": "monitoring"}
        )
        # Empty peer lists admit any source on those ports.
        policy = one(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
        self.assertTrue(all("from" not in r for r in policy["spec"]["ingress"]))

    # Alerts.

    def test_prometheus_rule_survives_name_override(self) -> None:
        docs = render(
            {
                "nameOverride": "notifier",
                "serviceMonitor": {"enabled": True},
                "prometheusRule": {"enabled": True},
            }
        )
        service = one(docs, "Service")
        sm = one(docs, "ServiceMonitor")
        # job = the Service's value of the jobLabel label.
        job = service["metadata"]["labels"][sm["spec"]["jobLabel"]]
        self.assertEqual(job, "notifier")
        selector = (
            f'job="notifier", namespace="{NAMESPACE}", service="{service["metadata"]["name"]}"'
        )
        alerts = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
        for r in alerts:
            self.assertIn(selector, r["expr"], r["alert"])
            self.assertNotIn("herald.*", r["expr"], r["alert"])
        self.assertTrue(
            any(r["expr"].startswith("absent(") for r in alerts), "an absent-target alert"
        )
        # Relative runbook links, or absolute under runbookBaseUrl.
        base = "https://git.example.com/herald/blob/v0.1.0/"
        docs = render({"prometheusRule": {"enabled": True, "runbookBaseUrl": base}})
        for g in one(docs, "PrometheusRule")["spec"]["groups"]:
            for r in g["rules"]:
                self.assertRegex(
                    r["annotations"]["runbook_url"],
                    "^" + re.escape(base + "dashboards/RUNBOOK.md#") + r"[a-z0-9]+$",
                )

    # The helm test.

    def helm_test_pod(self, docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        pods = [d for d in objects(docs) if d["kind"] == "Pod"]
        self.assertEqual(len(pods), 1)
        return pods[0]

    def test_helm_test_pod_renders(self) -> None:
        pod = self.helm_test_pod(self.default)
        self.assertEqual(pod["metadata"]["annotations"]["helm.sh/hook"], "test")
        service_selector = one(self.default, "Service")["spec"]["selector"]
        self.assertFalse(
            service_selector.items() <= pod["metadata"]["labels"].items(),
            "the Service must never route traffic to the test pod",
        )
        spec = pod["spec"]
        self.assertEqual(spec["restartPolicy"], "Never")
        self.assertIs(spec["automountServiceAccountToken"], False)
        (c,) = spec["containers"]
        self.assertEqual(c["image"], "docker.io/library/python:3.13-alpine")
        self.assertEqual(c["command"][:2], ["python3", "-c"])
        self.assertEqual(c["command"][2], (CHART / "files" / "helm-test.py").read_text())
        self.assertIs(c["securityContext"]["readOnlyRootFilesystem"], True)
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["HERALD_URL"]["value"], f"http://herald.{NAMESPACE}.svc:8000")
        self.assertEqual(env["HERALD_TEST_AUTH"]["value"], "true")
        self.assertEqual(env["HERALD_TEST_ALGORITHM"]["value"], "HS256")
        self.assertEqual(
            env["HERALD_JWT_SECRET"]["valueFrom"]["secretKeyRef"],
            {"name": "herald", "key": "jwt-secret"},
        )
        # Auth off: no secret. RS256 only: a token Secret is needed.
        pod = self.helm_test_pod(
            render({"config": {"auth": {"enabled": False, "production": False}}})
        )
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        self.assertEqual(env["HERALD_TEST_AUTH"]["value"], "false")
        self.assertNotIn("HERALD_JWT_SECRET", env)
        rs = {
            "config": {
                "auth": {"algorithms": ["RS256"], "jwks_url": "https://idp.example.com/jwks"}
            }
        }
        with self.assertRaisesRegex(helm.HelmError, "tests.tokenSecret"):
            render(rs)
        pod = self.helm_test_pod(render({**rs, "tests": {"tokenSecret": "herald-test-token"}}))
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        self.assertEqual(
            env["HERALD_TEST_TOKEN"]["valueFrom"]["secretKeyRef"],
            {"name": "herald-test-token", "key": "token"},
        )
        self.assertNotIn("Pod", kinds(render({"tests": {"enabled": False}})))

    def run_helm_test(
        self, pod: dict[str, Any], port: int, **override: str
    ) -> subprocess.CompletedProcess[str]:
        """Runs the test pod's command with its env, the Service URL pointed at `port`."""
        (c,) = pod["spec"]["containers"]
        env = {"PATH": os.environ.get("PATH", "")}
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
        env["HERALD_URL"] = f"http://127.0.0.1:{port}"
        env.update(override)
        return subprocess.run(
            [sys.executable, *c["command"][1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_helm_test_script_passes_against_a_real_herald(self) -> None:
        """The exact script and env of the test pod, against herald serving the rendered config."""
        secret = HERALD_ENV["HERALD_JWT_SECRET"]
        pod = self.helm_test_pod(self.default)
        with Herald(rendered_toml(self.default)) as herald:
            proc = self.run_helm_test(pod, herald.port, HERALD_JWT_SECRET=secret)
            log = herald.log()
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr + log)
            self.assertIn("published and received", proc.stdout)
            # It has teeth: a wrong secret fails it, and so does a Herald that
            # never answers ready.
            proc = self.run_helm_test(pod, herald.port, HERALD_JWT_SECRET="w" * 48)
            self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
            self.assertIn("401", proc.stdout)
        proc = self.run_helm_test(
            pod, free_port(), HERALD_JWT_SECRET=secret, HERALD_TEST_TIMEOUT_SECS="3"
        )
        self.assertEqual(proc.returncode, 1)
        self.assertIn("/readyz never answered 200", proc.stdout)
        # With audience and issuer configured, the minted token carries them.
        values = {"config": {"auth": {"audience": "notify", "issuer": "https://idp.example.com"}}}
        docs = render(values)
        with Herald(rendered_toml(docs)) as herald:
            proc = self.run_helm_test(
                self.helm_test_pod(docs), herald.port, HERALD_JWT_SECRET=secret
            )
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    # NOTES.

    def test_notes_token_command_works(self) -> None:
        text = notes()
        match = re.search(
            r"kubectl -n notify exec deploy/herald -- \\\n\s+(herald token [^)]*)\)", text
        )
        self.assertIsNotNone(match, text)
        args = re.findall(r"'[^']*'|\S+", match.group(1))
        args = [a.strip("'") for a in args]
        self.assertEqual(args[:4], ["herald", "token", "--config", "/etc/herald/herald.toml"])
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(rendered_toml(self.default))
            f.flush()
            proc = subprocess.run(
                [str(binary()), "token", "--config", f.name, *args[4:]],
                env=herald_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        header, claims, _ = proc.stdout.strip().split(".")
        claims = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["herald"]["subscribe"], ["news/*"])
        self.assertIn("helm test herald -n notify --logs", text)
        self.assertIn("Recreate", text)
        self.assertIn(
            "Broker: Redis",
            notes({"replicaCount": 2, "broker": {"kind": "redis", "existingSecret": "r"}}),
        )

    # Documentation.

    def test_every_value_is_documented(self) -> None:
        rows, undocumented = documented_values((CHART / "values.yaml").read_text())
        self.assertEqual(undocumented, [], "give these a `# --` comment in values.yaml")
        self.assertIn("config.auth.production", [p for p, _ in rows])

    def test_readme_values_table_is_current(self) -> None:
        self.assertEqual(
            README.read_text(),
            readme_with_table(),
            "run: python3 tests/helm/test_chart.py --update-readme",
        )


if __name__ == "__main__":
    if "--update-readme" in sys.argv:
        README.write_text(readme_with_table())
        print(f"updated {README.relative_to(ROOT)}")
        sys.exit(0)
    unittest.main(verbosity=2)
