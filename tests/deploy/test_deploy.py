#!/usr/bin/env python3
"""Tests of the files for running Herald without Kubernetes, and of the
shipped OpenAPI document.

- deploy/systemd/herald.service: `systemd-analyze verify` (with ExecStart
  pointed at the built binary, the only change), `systemd-analyze security`
  with an exposure of at most 2.0, the limits it must set, and the real
  `herald check-config` with the environment the unit gives Herald.
- deploy/compose/: the YAML parses; every bind mount exists; ports are
  published on loopback only; Prometheus scrapes Herald's admin listener
  (`promtool check config` on the config laid out as the container sees it);
  Grafana provisions a Prometheus data source and the shipped dashboards;
  and `herald check-config` accepts the config and environment the compose
  file gives Herald.
- static/openapi.json: a valid OpenAPI 3.1 document (openapi-spec-validator).

    python3 -m pip install pyyaml openapi-spec-validator
    python3 tests/deploy/test_deploy.py

Needs `systemd-analyze` (Debian `systemd`) and `promtool` (Debian
`prometheus`); scripts/test.sh installs both. The herald binary comes from
$HERALD_BIN or `cargo build --bin herald`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
UNIT = DEPLOY / "systemd" / "herald.service"
_HERALD: str | None = None


def herald() -> str:
    global _HERALD
    if _HERALD is None:
        if os.environ.get("HERALD_BIN"):
            _HERALD = str(Path(os.environ["HERALD_BIN"]).resolve())
        else:
            subprocess.run(["cargo", "build", "--quiet", "--bin", "herald"], cwd=ROOT, check=True)
            _HERALD = str(ROOT / "target" / "debug" / "herald")
    return _HERALD


def need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise AssertionError(f"{program} not found: apt-get install {package} (scripts/test.sh does)")
    return path


def check_config(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "")}
    clean.update(env)
    return subprocess.run(
        [herald(), "check-config", str(config)], env=clean, capture_output=True, text=True, timeout=60
    )


def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


class SystemdUnit(unittest.TestCase):
    def test_verify_and_security(self) -> None:
        analyze = need("systemd-analyze", "systemd")
        with tempfile.TemporaryDirectory() as tmp:
            unit = Path(tmp) / "herald.service"
            text = UNIT.read_text()
            self.assertIn("ExecStart=/usr/local/bin/herald ", text)
            unit.write_text(text.replace("/usr/local/bin/herald", herald()))
            res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
            self.assertEqual(res.returncode, 0, f"systemd-analyze verify:\n{res.stdout}{res.stderr}")
            self.assertEqual(res.stderr.strip(), "", "verify prints no warning")
            # Exposure x 10: 20 = "2.0 OK" on systemd's 0-10 scale.
            res = subprocess.run(
                [analyze, "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
                capture_output=True,
                text=True,
            )
            last = (res.stdout.strip().splitlines() or [""])[-1]
            self.assertEqual(res.returncode, 0, f"exposure above 2.0: {last}\n{res.stderr}")

    def test_limits_restart_and_sandbox(self) -> None:
        d = unit_directives()
        self.assertEqual(d.get("LimitNOFILE"), ["1048576"])
        self.assertEqual(d.get("Restart"), ["on-failure"])
        self.assertEqual(d.get("AmbientCapabilities"), [""])
        self.assertEqual(d.get("CapabilityBoundingSet"), [""])
        self.assertEqual(d.get("ProtectSystem"), ["strict"])
        self.assertEqual(d.get("DynamicUser"), ["yes"])
        self.assertEqual(d.get("NoNewPrivileges"), ["yes"])
        exec_start = d["ExecStart"][0].split()
        self.assertEqual(exec_start[1:3], ["--config", "/etc/herald/herald.toml"])
        # Stop must outlast the drain of the config it points operators at.
        grace = tomllib_grace(ROOT / "config" / "production.toml")
        stop = int(re.fullmatch(r"(\d+)s", d["TimeoutStopSec"][0]).group(1))
        self.assertGreater(stop, grace)

    def test_the_units_environment_is_a_valid_config(self) -> None:
        d = unit_directives()
        with tempfile.TemporaryDirectory() as creds:
            (Path(creds) / "jwt-secret").write_text("s" * 48)
            env = {}
            for value in d.get("Environment", []):
                key, _, val = value.partition("=")
                env[key] = val.replace("%d", creds)
            self.assertIn("HERALD_AUTH__HS_SECRET_FILE", env)
            self.assertEqual(d.get("LoadCredential"), ["jwt-secret:/etc/herald/jwt-secret"])
            res = check_config(ROOT / "config" / "production.toml", env)
            self.assertEqual(res.returncode, 0, f"check-config with {env}:\n{res.stdout}{res.stderr}")


def tomllib_grace(path: Path) -> int:
    import tomllib

    return tomllib.loads(path.read_text())["shutdown"]["grace_secs"]


def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((COMPOSE_DIR / source).resolve(), target))
    return out


class Compose(unittest.TestCase):
    def test_services_and_build(self) -> None:
        c = compose()
        self.assertEqual(set(c["services"]), {"herald", "redis", "prometheus", "grafana"})
        build = c["services"]["herald"]["build"]
        self.assertEqual((COMPOSE_DIR / build["context"]).resolve(), ROOT)
        self.assertEqual(build["dockerfile"], "Dockerfile")

    def test_bind_mounts_exist_and_ports_are_loopback(self) -> None:
        for name, service in compose()["services"].items():
            for source, target in bind_mounts(service):
                self.assertTrue(source.exists(), f"{name}: {source} (mounted at {target}) is missing")
            for port in service.get("ports", []):
                self.assertTrue(str(port).startswith("127.0.0.1:"), f"{name}: {port} is not loopback-only")

    def test_herald_gets_a_valid_config(self) -> None:
        herald_svc = compose()["services"]["herald"]
        command = herald_svc["command"]
        self.assertEqual(command[0], "--config")
        mounts = {target: source for source, target in bind_mounts(herald_svc)}
        config = mounts[command[1]]
        env = {k: str(v) for k, v in herald_svc["environment"].items()}
        self.assertEqual(env.get("HERALD_BROKER__KIND"), "redis")
        self.assertTrue(env["HERALD_BROKER__URL"].startswith("redis://redis:6379"))
        res = check_config(config, env)
        self.assertEqual(res.returncode, 0, f"herald check-config {config} with {env}:\n{res.stdout}{res.stderr}")
        self.assertEqual(herald_svc["ulimits"]["nofile"]["soft"], 1048576)

    def test_prometheus_scrapes_the_admin_listener(self) -> None:
        promtool = need("promtool", "prometheus")
        c = compose()
        admin_port = c["services"]["herald"]["environment"]["HERALD_TELEMETRY__ADMIN_LISTEN"].rsplit(":", 1)[1]
        prom = c["services"]["prometheus"]
        config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
        (job,) = config["scrape_configs"]
        self.assertEqual(job["static_configs"][0]["targets"], [f"herald:{admin_port}"])
        self.assertRegex(job["job_name"], "herald", "the alerts select jobs matching .*herald.*")
        # Lay the mounted files out as the container sees them, then check.
        with tempfile.TemporaryDirectory() as tmp:
            etc = Path(tmp)
            for source, target in bind_mounts(prom):
                self.assertTrue(target.startswith("/etc/prometheus/"), target)
                shutil.copy(source, etc / Path(target).name)
            res = subprocess.run(
                [promtool, "check", "config", str(etc / "prometheus.yml")], capture_output=True, text=True
            )
            self.assertEqual(res.returncode, 0, f"promtool check config:\n{res.stdout}{res.stderr}")
            self.assertIn("herald-alerts.yaml", res.stdout + res.stderr, "the alert rules were checked")

    def test_grafana_provisions_prometheus_and_the_dashboards(self) -> None:
        c = compose()
        grafana = c["services"]["grafana"]
        mounts = {target: source for source, target in bind_mounts(grafana)}
        provisioning = mounts["/etc/grafana/provisioning"]
        (ds,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
        self.assertEqual(ds["type"], "prometheus")
        self.assertTrue(ds["isDefault"])
        prom_port = c["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
        self.assertEqual(ds["url"], f"http://prometheus:{prom_port}")
        (provider,) = yaml.safe_load((provisioning / "dashboards" / "herald.yaml").read_text())["providers"]
        dashboards = mounts[provider["options"]["path"]]
        self.assertEqual(dashboards, ROOT / "dashboards")
        files = sorted(dashboards.glob("*.json"))
        self.assertGreaterEqual(len(files), 2, "the shipped dashboards")
        for f in files:
            board = json.loads(f.read_text())
            variables = {v["name"]: v for v in board["templating"]["list"]}
            self.assertEqual(variables["datasource"]["type"], "datasource", f.name)
            self.assertEqual(variables["datasource"]["query"], ds["type"], f.name)


class OpenApi(unittest.TestCase):
    def test_the_document_is_valid_openapi_3_1(self) -> None:
        spec, _ = read_from_filename(str(ROOT / "static" / "openapi.json"))
        self.assertTrue(spec["openapi"].startswith("3.1."))
        validate(spec)


if __name__ == "__main__":
    unittest.main(verbosity=2)
