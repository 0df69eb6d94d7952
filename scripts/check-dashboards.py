#!/usr/bin/env python3
"""Check Herald's Grafana dashboards and alert rules, and list their PromQL.

Reads dashboards/herald-overview.json, dashboards/herald-instance.json,
dashboards/herald-alerts.yaml, its promtool tests and dashboards/RUNBOOK.md
(Python 3 standard library only), then:

  * checks that every panel has a unit (fieldConfig.defaults.unit) and at
    least one query, that panel titles are unique per dashboard, and that
    panels and variables use the `$datasource` variable;
  * checks that the `datasource`, `namespace`, `pod` and `instance` variables
    exist, that the last three include "All" as `.*`, and that every metric
    selector in a panel filters on all three;
  * checks that every rate(), irate() and increase() in a dashboard uses
    `$__rate_interval`;
  * checks that every herald_* and process_* name in any expression, and
    every other name used with a `{...}` selector, is one the service
    exports (or Prometheus's own `up`);
  * checks that every alert has labels.severity, the annotations summary,
    description and runbook_url (a section of dashboards/RUNBOOK.md that
    exists), that every selector in it carries job=~".*herald.*" (the Helm
    chart narrows that matcher to its release), and that the promtool tests
    check it both firing and quiet.

On success it prints every expression, with the Grafana variables replaced
so that Prometheus can run it, one JSON object a line:

  {"source": "dashboards/herald-overview.json", "panel": "Connections",
   "kind": "panel", "expr": "sum(herald_connections{...})"}

`kind` is "panel", "variable" or "alert". On failure it prints each problem
to stderr and exits 1 (2 for a missing or unreadable file).

Usage: scripts/check-dashboards.py [--root DIR]   (DIR defaults to the repo)
"""

import argparse
import json
import re
import sys
from pathlib import Path

DASHBOARDS = ["dashboards/herald-overview.json", "dashboards/herald-instance.json"]
RULES = "dashboards/herald-alerts.yaml"
RULE_TESTS = "dashboards/herald-alerts.test.yaml"
RUNBOOK = "dashboards/RUNBOOK.md"
# The matcher every alert selector carries; the chart replaces it verbatim.
JOB_MATCHER = 'job=~".*herald.*"'

# Exactly what Herald exports (src/telemetry/metrics.rs and metrics-process).
EXPORTED = {
    "herald_connections",
    "herald_connections_opened_total",
    "herald_connections_closed_total",
    "herald_connections_limit",
    "herald_subscriptions",
    "herald_channels",
    "herald_events_published_total",
    "herald_events_delivered_total",
    "herald_replays_total",
    "herald_resets_total",
    "herald_slow_subscribers_total",
    "herald_auth_failures_total",
    "herald_rate_limited_total",
    "herald_http_requests_total",
    "herald_build_info",
    "herald_channels_reaped_total",
    "herald_publish_errors_total",
    "herald_channel_events_published_total",
    "herald_jwks_refreshes_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
    # The cgroup memory limit (the host's memory without one), from
    # src/telemetry; the memory panels and HeraldMemoryNearLimit divide by it.
    "herald_memory_limit_bytes",
    # Retained history and its evictions (src/hub), and the broker (src/broker).
    "herald_history_bytes",
    "herald_history_evicted_total",
    "herald_broker_up",
    "herald_broker_errors_total",
    "herald_broker_resyncs_total",
    "herald_idempotent_publishes_total",
}
# Series Prometheus itself writes for every target, not Herald's: `up` (1 when
# the scrape succeeded), which HeraldInstanceDown and HeraldTargetAbsent use.
PROMETHEUS_SERIES = {"up"}
HISTOGRAMS = {
    "herald_fanout_latency_seconds",
    "herald_http_request_duration_seconds",
    "herald_broker_publish_duration_seconds",
}
KNOWN_METRICS = (
    EXPORTED
    | PROMETHEUS_SERIES
    | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)
# The filters every dashboard selector carries, so the variables apply everywhere.
DASHBOARD_FILTERS = ('namespace=~"$namespace"', 'pod=~"$pod"', 'instance=~"$instance"')

# What each Grafana variable becomes when the expression is sent to Prometheus.
SUBSTITUTIONS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "datasource": "",
    "namespace": ".*",
    "instance": ".*",
    "pod": ".*",
}
# $name or ${name}; ${1} (a label_replace group) does not start with a letter.
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
METRIC = re.compile(r"\b(?:herald|process)_[a-z_]+\b")
# A metric name with its selector braces: `name{...}` (function calls take
# parentheses, so anything directly before a brace is a metric).
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase)\s*\(")
RANGE = re.compile(r"\[([^\]]*)\]")
RATE_INTERVAL = {"$__rate_interval", "${__rate_interval}"}
DATASOURCE_UIDS = {"$datasource", "${datasource}"}


class Problems:
    """Collects every problem so that one run reports them all."""

    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


def substitute(expr):
    """Replaces Grafana variables with values Prometheus accepts."""

    def one(match):
        name = match.group(1) or match.group(2)
        return SUBSTITUTIONS.get(name, match.group(0))

    return VARIABLE.sub(one, expr)


def closing_paren(text, open_index):
    """Index of the parenthesis closing the one at open_index, or -1."""
    depth = 0
    i = open_index
    while i < len(text):
        c = text[i]
        if c in "\"'`":
            end = text.find(c, i + 1)
            while end != -1 and c != "`" and text[end - 1] == "\\":
                end = text.find(c, end + 1)
            if end == -1:
                return -1
            i = end
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def check_expression(expr, where, problems, dashboard, required=()):
    """Checks one raw expression (variables not yet substituted).

    `required`: matchers every `name{...}` selector in it must carry.
    """
    bare = STRING.sub('""', expr)
    names = set(METRIC.findall(bare)) | {m.group(1) for m in SELECTOR.finditer(bare)}
    for name in sorted(names):
        if name not in KNOWN_METRICS:
            problems.add(where, f"unknown metric {name!r} (not exported by Herald)")
    for m in SELECTOR.finditer(expr):
        for matcher in required:
            if matcher not in m.group(2):
                problems.add(where, f"selector {m.group(0)!r} lacks {matcher}")
    if required:
        # A bare metric name, without braces, would escape the filters.
        in_selectors = {m.group(1) for m in SELECTOR.finditer(bare)}
        for name in sorted(set(METRIC.findall(bare)) - in_selectors):
            problems.add(where, f"{name} has no selector with {', '.join(required)}")
    if dashboard:
        for m in RANGE_FUNCTION.finditer(expr):
            end = closing_paren(expr, m.end() - 1)
            if end == -1:
                problems.add(where, f"unbalanced parentheses after {m.group(1)}(")
                continue
            ranges = RANGE.findall(STRING.sub('""', expr[m.end():end]))
            if not ranges:
                problems.add(where, f"{m.group(1)}() has no range selector")
            for r in ranges:
                if r.strip() not in RATE_INTERVAL:
                    problems.add(where, f"{m.group(1)}() uses [{r}], not [$__rate_interval]")
    substituted = substitute(expr)
    for m in VARIABLE.finditer(substituted):
        problems.add(where, f"unknown Grafana variable {m.group(0)!r}")
    return substituted


def walk_panels(panels):
    """Every panel, including those inside rows (collapsed rows hold them)."""
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels"))


def variable_expression(query):
    """The PromQL inside a Grafana Prometheus variable query, or None."""
    if isinstance(query, dict):
        query = query.get("query", "")
    if not isinstance(query, str):
        return None
    query = query.strip()
    for fn in ("label_values", "query_result"):
        if query.startswith(fn + "("):
            end = closing_paren(query, len(fn))
            inner = query[len(fn) + 1:end] if end != -1 else ""
            if fn == "query_result":
                return inner.strip() or None
            # label_values(expr, label): the expression is everything before
            # the last top-level comma; label_values(label) has none.
            depth, split = 0, -1
            for i, c in enumerate(inner):
                depth += c in "({["
                depth -= c in ")}]"
                if c == "," and depth == 0:
                    split = i
            return inner[:split].strip() if split != -1 else None
    return None


def check_dashboard(path, source, problems, out):
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}

    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.add(source, "needs a `datasource` variable of type datasource, query prometheus")
    for name in ("namespace", "pod", "instance"):
        var = variables.get(name)
        if var is None:
            problems.add(source, f"needs a `{name}` variable")
        elif not var.get("includeAll") or var.get("allValue") != ".*":
            problems.add(f"{source} variable {name}",
                         'needs includeAll and allValue ".*" so series without the label match')

    for name, var in variables.items():
        where = f"{source} variable {name}"
        if var.get("type") != "query":
            continue
        if (var.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
            problems.add(where, "datasource must be ${datasource}")
        expr = variable_expression(var.get("query"))
        if expr:
            out.append({"source": source, "panel": name, "kind": "variable",
                        "expr": check_expression(expr, where, problems, True)})

    titles = set()
    for panel in walk_panels(dashboard.get("panels")):
        if panel.get("type") == "row":
            continue
        title = panel.get("title") or f"id {panel.get('id')}"
        where = f"{source} panel {title!r}"
        if title in titles:
            problems.add(where, "duplicate panel title")
        titles.add(title)
        unit = ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit")
        if not isinstance(unit, str) or not unit.strip():
            problems.add(where, "has no unit (fieldConfig.defaults.unit)")
        if (panel.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
            problems.add(where, "datasource must be ${datasource}")
        exprs = 0
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            exprs += 1
            ref = target.get("refId", "?")
            if (target.get("datasource") or {}).get("uid") not in DATASOURCE_UIDS:
                problems.add(f"{where} target {ref}", "datasource must be ${datasource}")
            out.append({"source": source, "panel": title, "kind": "panel",
                        "expr": check_expression(expr, f"{where} target {ref}", problems, True,
                                                 DASHBOARD_FILTERS)})
        if exprs == 0:
            problems.add(where, "has no PromQL query (targets[].expr)")


RULE_ITEM = re.compile(r"^(\s*)-\s+(alert|record|expr|for|labels|annotations)\s*:")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
KEY = re.compile(r"^(\s*)(?:-\s+)?([A-Za-z_]\w*)\s*:\s*(.*)$")


def unquote(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def parse_rules(text):
    """Splits a Prometheus rules file into rule items without a YAML library.

    Enough for the standard layout: one `- alert:`/`- record:` item a rule,
    `expr` inline or as a `|`/`>` block scalar. Returns dicts with the name,
    the expr, the set of keys seen and the line number.
    """
    lines = text.splitlines()
    rules = []
    item = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = RULE_ITEM.match(line)
        if m:
            item = {"line": i + 1, "name": None, "expr": None, "keys": set()}
            rules.append(item)
        k = KEY.match(line)
        if item is not None and k and not line.lstrip().startswith("#"):
            indent, key, value = len(k.group(1)), k.group(2), k.group(3)
            item["keys"].add(key)
            if key in ("alert", "record"):
                item["name"] = unquote(value)
            elif key == "runbook_url":
                item["runbook_url"] = unquote(value)
            elif key == "expr":
                if value.strip()[:1] in ("|", ">"):
                    block = []
                    i += 1
                    while i < len(lines) and (
                        not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
                    ):
                        block.append(lines[i])
                        i += 1
                    item["expr"] = "\n".join(b.strip() for b in block).strip()
                    continue
                item["expr"] = unquote(value)
        i += 1
    return rules


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors(path):
    anchors = set()
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        m = HEADING.match(line)
        if m and not fence:
            anchors.add(github_anchor(m.group(1)))
    return anchors


def tested_states(path):
    """{alert: {"firing", "quiet"}}: what the promtool tests expect of each alert."""
    text = path.read_text(encoding="utf-8")
    states = {}
    for m in re.finditer(r"alertname:\s*(\w+)[\s\S]*?exp_alerts:\s*(\[\])?", text):
        states.setdefault(m.group(1), set()).add("quiet" if m.group(2) else "firing")
    return states


def check_rules(path, source, problems, out, root):
    rules = parse_rules(path.read_text(encoding="utf-8"))
    if not rules:
        problems.add(source, "no rules found")
    anchors = runbook_anchors(root / RUNBOOK)
    states = tested_states(root / RULE_TESTS)
    for rule in rules:
        name = rule["name"] or f"line {rule['line']}"
        where = f"{source} rule {name}"
        if not rule["expr"]:
            problems.add(where, "has no expr")
            continue
        if "alert" in rule["keys"]:
            for key in ("severity", "summary", "description", "runbook_url"):
                if key not in rule["keys"]:
                    problems.add(where, f"has no {key}")
            url = rule.get("runbook_url") or ""
            prefix = RUNBOOK + "#"
            if url and not url.startswith(prefix):
                problems.add(where, f"runbook_url {url!r} does not point into {RUNBOOK}")
            elif url and url[len(prefix):] not in anchors:
                problems.add(where, f"runbook_url {url!r}: {RUNBOOK} has no such section")
            for state in ("firing", "quiet"):
                if state not in states.get(name, set()):
                    problems.add(where, f"{RULE_TESTS} never checks it {state}")
        out.append({"source": source, "panel": name, "kind": "alert",
                    "expr": check_expression(rule["expr"], where, problems, False,
                                             (JOB_MATCHER,))})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root (default: the parent of scripts/)")
    args = parser.parse_args()

    problems = Problems()
    out = []
    try:
        for source in DASHBOARDS:
            check_dashboard(args.root / source, source, problems, out)
        check_rules(args.root / RULES, RULES, problems, out, args.root)
    except (OSError, ValueError) as err:
        print(f"check-dashboards: cannot read: {err}", file=sys.stderr)
        return 2

    if problems.items:
        for p in problems.items:
            print(f"check-dashboards: {p}", file=sys.stderr)
        print(f"check-dashboards: {len(problems.items)} problem(s)", file=sys.stderr)
        return 1
    for record in out:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
