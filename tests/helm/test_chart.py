#!/usr/bin/env python3
"""Tests of the Helm chart in helm/herald.

Lints the chart with Helm's own Go code (PyPI `helm-python-sdk`), renders it
with the default values and with every optional feature on, validates each
rendered manifest offline against the Kubernetes OpenAPI schemas (PyPI
`kubernetes-validate`; the prometheus-operator CRDs have no schema there, so
their structure is checked by hand), feeds the rendered config to the real
`herald check-config`, and asserts the chart's invariants.

    python3 -m pip install helm-python-sdk kubernetes-validate
    python3 tests/helm/test_chart.py                  # run the tests
    python3 tests/helm/test_chart.py --update-readme  # regenerate the values table

The herald binary comes from $HERALD_BIN, or from `cargo test --no-run`
(the same debug build the `cargo test` step reuses).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
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
CRD_GROUP = "monitoring.coreos.com/"
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
    "podDisruptionBudget": {"enabled": True},
    "extraEnv": [{"name": "HERALD_LIMITS__PUBLISH_PER_SECOND", "value": "50"}],
    "podAnnotations": {"example.com/team": "notify"},
    "podLabels": {"example.com/tier": "edge"},
}


def render(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Renders the chart; returns the parsed documents of each template."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: dict[str, list[dict[str, Any]]] = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs[path] = [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


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
        for name, values in (("default", None), ("full", FULL_VALUES)):
            report = helm.lint(CHART, values, strict=True, kube_version="v" + KUBE_VERSION)
            self.assertEqual(report["errors"], [], f"{name}: {report}")
            serious = [m for m in report["messages"] if m["severity"] >= 2]
            self.assertEqual(serious, [], f"{name}: lint warnings or errors")

    def test_default_render_has_the_core_objects_only(self) -> None:
        self.assertEqual(
            kinds(self.default),
            ["ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"],
        )

    def test_full_render_has_every_optional_object(self) -> None:
        self.assertEqual(
            kinds(self.full),
            [
                "ConfigMap",
                "ConfigMap",
                "Deployment",
                "Ingress",
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
                if doc["apiVersion"].startswith(CRD_GROUP):
                    continue
                with self.subTest(render=name, kind=doc["kind"]):
                    try:
                        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        path = ".".join(str(p) for p in e.path)
                        self.fail(f"{doc['kind']} {path}: {e.message}")
                    checked += 1
        self.assertGreaterEqual(checked, 12)

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
        # Without an admin listener, the main port is scraped.
        sm = one(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "http")

    def test_prometheus_rule_wraps_the_alert_file(self) -> None:
        rule = one(self.full, "PrometheusRule")
        self.assertEqual(rule["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus-stack")
        self.assertEqual(set(rule["spec"]), {"groups"})
        source = yaml.safe_load((ROOT / "dashboards" / "herald-alerts.yaml").read_text())
        self.assertEqual(rule["spec"]["groups"], source["groups"])
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        self.assertGreaterEqual(len(alerts), 1)
        for r in alerts:
            self.assertTrue(r["alert"].startswith("Herald"), r)
            self.assertIsInstance(r["expr"], str)
            self.assertIn(r["labels"]["severity"], {"warning", "critical"})
            self.assertIn("summary", r["annotations"])
        # The job label the ServiceMonitor produces is what HeraldInstanceDown matches.
        self.assertTrue(any('job=~".*herald.*"' in r["expr"] for r in alerts))

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
        self.assertNotIn("admin_listen", tomllib.loads(rendered_toml(self.default))["telemetry"])

    def test_ports_follow_the_listen_addresses(self) -> None:
        ports = {p["name"]: p["containerPort"] for p in container(self.full)["ports"]}
        self.assertEqual(ports, {"http": 8000, "metrics": 9090})
        docs = render({"config": {"listen": "[::]:8080"}})
        self.assertEqual(
            container(docs)["ports"], [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
        )
        self.assertEqual(one(docs, "Service")["spec"]["ports"][0]["targetPort"], "http")

    def test_secrets_never_go_into_the_config_map(self) -> None:
        with self.assertRaisesRegex(helm.HelmError, "do not belong in a ConfigMap"):
            render({"config": {"auth": {"hs_secret": "x" * 40}}})

    def test_herald_accepts_the_rendered_config(self) -> None:
        binary = herald_binary()
        env = {"PATH": os.environ.get("PATH", ""), "HERALD_JWT_SECRET": "k" * 48}
        for name, docs in (("default", self.default), ("full", self.full)):
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(rendered_toml(docs))
                f.flush()
                proc = subprocess.run(
                    [str(binary), "check-config", f.name],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                self.assertEqual(proc.returncode, 0, f"{name}: {proc.stderr}")
        # The check has teeth: a key Herald does not know is refused.
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
            f.write(rendered_toml(render({"config": {"hub": {"ring_siz": 3}}})))
            f.flush()
            proc = subprocess.run(
                [str(binary), "check-config", f.name],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertNotEqual(proc.returncode, 0)

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
