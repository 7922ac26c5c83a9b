"""The shipped Grafana dashboard and Prometheus alert rules (deploy/observability/, issue 18) name
only metrics and labels a real daemon exports: a renamed metric or label fails here, not silently
in someone's monitoring.

The PromQL is read by a small tokenizer (`promql_references`), enough for the expressions shipped:
selectors (`name{label op "value", …}`), aggregations with `by`/`without`, function calls, binary
operators, numbers, range and subquery brackets. What it cannot read it refuses, so a new construct
fails loudly instead of being skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.constants import WALLET
from tests.e2e.harness import free_port, run_sweeper, sandbox, start_sweeper, wait_until, write_config

OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "sweeper-dashboard.json"
ALERTS = OBSERVABILITY / "sweeper-alerts.yml"
DEPLOY_README = REPO / "deploy" / "README.md"

# Series Prometheus makes itself for every scrape, and the labels it adds to every scraped series.
PROMETHEUS_SERIES: dict[str, set[str]] = {"up": set()}
TARGET_LABELS = frozenset({"job", "instance"})

AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
FUNCTIONS = frozenset(
    {
        "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
        "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor",
        "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
        "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets",
        "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year",
        "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
        "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    }
)  # fmt: skip
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"bool", "and", "or", "unless", "offset", "inf", "nan"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]\[]*\])
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchop>=~|!~|!=)
  | (?P<op>==|>=|<=|[-+*/%^<>=])
  | (?P<punct>[(){},@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    depth: int  # parenthesis depth before this token


@dataclass
class References:
    """What one PromQL expression names: each selector's metric with its matcher labels, and each
    label list (`by (…)`, …) with the metrics its aggregation reads."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    groupings: list[tuple[set[str], set[str]]] = field(default_factory=list)  # (labels, metrics)


def _tokens(expr: str) -> list[Token]:
    out: list[Token] = []
    depth, pos = 0, 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind == "space":
            continue
        text = match.group()
        if text == ")":
            depth -= 1
        out.append(Token(kind, text, depth))
        if text == "(":
            depth += 1
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in {expr!r}")
    return out


def _closing(tokens: list[Token], open_at: int) -> int:
    """The index of the `)` closing the `(` at `open_at`."""
    assert tokens[open_at].text == "("
    depth = tokens[open_at].depth
    for i in range(open_at + 1, len(tokens)):
        if tokens[i].text == ")" and tokens[i].depth == depth:
            return i
    raise ValueError("unbalanced parentheses")


def _label_list(tokens: list[Token], open_at: int) -> tuple[set[str], int]:
    """`(a, b)` at `open_at`: the labels and the index after `)`."""
    end = _closing(tokens, open_at)
    inner = tokens[open_at + 1 : end]
    if any(t.kind != "ident" and t.text != "," for t in inner):
        raise ValueError(f"not a label list: ({' '.join(t.text for t in inner)})")
    return {t.text for t in inner if t.kind == "ident"}, end + 1


def promql_references(expr: str) -> References:
    if "$" in re.sub(r"\[[^\]]*\]|\"[^\"]*\"", "", expr):
        raise ValueError(f"a Grafana variable outside a string or a range: {expr!r}")
    tokens = _tokens(expr)
    refs = References()
    positions: list[tuple[int, str]] = []  # (token index, metric) of each selector
    aggregations: list[tuple[set[str], int, int]] = []  # (labels, argument's "(" index, its ")" index)
    read_already: dict[int, int] = {}  # a trailing `by (…)` clause's first index -> the index after it
    i = 0
    while i < len(tokens):
        if i in read_already:
            i = read_already[i]
            continue
        token = tokens[i]
        if token.kind != "ident":
            if token.text == "{":
                raise ValueError(f"a selector without a metric name: {expr!r}")
            i += 1
            continue
        word, following = token.text, tokens[i + 1].text if i + 1 < len(tokens) else ""
        lowered = word.lower()
        if lowered in AGGREGATIONS and following in ("(", "by", "without"):
            labels: set[str] = set()
            j = i + 1
            if tokens[j].text in ("by", "without"):
                labels, j = _label_list(tokens, j + 1)
            if tokens[j].text != "(":
                raise ValueError(f"{word} without an argument in {expr!r}")
            end = _closing(tokens, j)
            if end + 1 < len(tokens) and tokens[end + 1].text in ("by", "without"):
                more, after = _label_list(tokens, end + 2)
                labels |= more
                read_already[end + 1] = after
            aggregations.append((labels, j, end))
            i = j
        elif lowered in FUNCTIONS and following == "(":
            i += 1
        elif lowered in LABEL_LIST_KEYWORDS and following == "(":
            labels, i = _label_list(tokens, i + 1)
            refs.groupings.append((labels, set()))  # `on (…)` etc.: checked against every metric
        elif lowered in KEYWORDS or lowered in ("group_left", "group_right"):  # these two need no list
            i += 1
        elif following == "(":
            raise ValueError(f"unknown function {word!r} in {expr!r}")
        else:
            matchers: set[str] = set()
            j = i + 1
            if following == "{":
                j += 1
                while tokens[j].text != "}":
                    name, op, value = tokens[j : j + 3]
                    if (
                        name.kind != "ident"
                        or op.text not in ("=", "!=", "=~", "!~")
                        or value.kind != "string"
                    ):
                        raise ValueError(f"cannot read the matchers of {word} in {expr!r}")
                    matchers.add(name.text)
                    j += 3
                    if tokens[j].text == ",":
                        j += 1
                j += 1
            refs.selectors.append((word, matchers))
            positions.append((i, word))
            i = j
    every_metric = {metric for _, metric in positions}
    refs.groupings = [(labels, every_metric) for labels, _ in refs.groupings]
    for labels, start, end in aggregations:
        refs.groupings.append((labels, {metric for at, metric in positions if start < at < end}))
    return refs


def scraped_labels(text: str) -> dict[str, set[str]]:
    """Every series name in a /metrics text (as PromQL sees them: `x_total`, `x_created`) and its labels."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def problems_in(expr: str, where: str, scraped: dict[str, set[str]]) -> list[str]:
    known = {**scraped, **PROMETHEUS_SERIES}
    try:
        refs = promql_references(expr)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    found: list[str] = []
    if not refs.selectors:
        found.append(f"{where}: names no metric: {expr!r}")
    for metric, labels in refs.selectors:
        if metric not in known:
            found.append(f"{where}: metric {metric!r} is not in the scrape")
            continue
        for label in sorted(labels - known[metric] - TARGET_LABELS):
            found.append(f"{where}: {metric} has no label {label!r} (it has {sorted(known[metric])})")
    for labels, metrics in refs.groupings:
        for metric in sorted(metrics & known.keys()):
            for label in sorted(labels - known[metric] - TARGET_LABELS):
                found.append(f"{where}: grouping by {label!r}, which {metric} does not have")
    return found


# --- the files -------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows keep theirs inside


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every `label_values` variable query (its selector
    becomes a one-selector expression; its label a `by` clause)."""
    out: list[tuple[str, str]] = []
    for panel in _panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"].strip())
            assert match, f"variable {variable['name']}: only label_values(selector, label) is read here"
            out.append((f"variable {variable['name']!r}", f"count by ({match[2]}) ({match[1]})"))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in rules()]


_DURATION = re.compile(r"(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def test_the_rule_file_is_prometheus_rule_yaml() -> None:
    data = yaml.safe_load(ALERTS.read_text())
    assert isinstance(data, dict) and set(data) == {"groups"}
    assert isinstance(data["groups"], list) and data["groups"]
    names = [group["name"] for group in data["groups"]]
    assert len(set(names)) == len(names), "group names must be unique"
    alerts: list[str] = []
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "limit", "query_offset", "rules"}, group.keys()
        assert isinstance(group["name"], str) and group["name"]
        assert isinstance(group["rules"], list) and group["rules"], group["name"]
        for rule in group["rules"]:
            where = rule.get("alert", rule)
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, where
            assert isinstance(rule["alert"], str) and _LABEL_NAME.fullmatch(rule["alert"]), where
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
            duration = rule.get("for", "0s")
            assert isinstance(duration, str) and duration and _DURATION.fullmatch(duration), (where, duration)
            for key in ("labels", "annotations"):
                mapping = rule.get(key, {})
                assert isinstance(mapping, dict), (where, key)
                for name, value in mapping.items():
                    assert isinstance(name, str) and _LABEL_NAME.fullmatch(name), (where, name)
                    assert isinstance(value, str), (where, key, name, value)
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), where
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], where
            assert "deploy/README.md" in rule["annotations"]["description"], f"{where}: no runbook pointer"
            alerts.append(rule["alert"])
    assert len(set(alerts)) == len(alerts), "alert names must be unique"
    readme = DEPLOY_README.read_text()
    assert "## 4b. Dashboards and alerts" in readme
    undocumented = [alert for alert in alerts if f"`{alert}`" not in readme]
    assert not undocumented, f"alerts deploy/README.md does not explain: {undocumented}"


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert data["schemaVersion"] >= 36 and data["title"] and data["uid"]
    panels = list(_panels(data["panels"]))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), "panel ids must be unique"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {data["uid"], "-- Grafana --"}
    assert uids == {"${datasource}"}, f"a hard-coded datasource uid: {uids}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert isinstance(target["expr"], str) and target["expr"].strip(), panel["title"]


def test_the_tokenizer_finds_what_would_be_wrong() -> None:
    """The check below is only as good as this reading of PromQL: each mistake must show up."""
    scraped = scraped_labels(
        "# TYPE sweeper_node_errors counter\nsweeper_node_errors_total 1.0\n"
        '# TYPE sweeper_sweeps gauge\nsweeper_sweeps{state="queued"} 0.0\n'
        '# TYPE sweeper_swept_base_units_total gauge\nsweeper_swept_base_units_total{token="USDT"} 5.0\n'
    )
    fine = [
        'sum by (job, instance) (rate(sweeper_node_errors_total{job="sweeper"}[5m])) > 0.1',
        'max(sweeper_sweeps{job="$job", state!~"confirmed|failed"}) by (state) / 1e6',
        "max by (token) (sweeper_swept_base_units_total) * on (token) group_left sweeper_swept_base_units_total",
        "absent(sweeper_sweeps) or up == 0 or vector(1) > bool 2 offset 5m",
        "max(delta(sweeper_sweeps[1h:1m]))",
    ]
    for expr in fine:
        assert problems_in(expr, "fine", scraped) == [], expr
    wrong = [
        "rate(sweeper_node_errors[5m])",  # the counter's series is sweeper_node_errors_total
        'sweeper_sweeps{status="queued"}',  # no such label
        "max by (tokn) (sweeper_swept_base_units_total)",  # no such label to group by
        "sum(sweeper_sweeps) without (token)",  # a label of another metric
        "sweeper_swept_total",  # no such metric
        "rate(sweeper_node_errors_total[5m]) and on (state) sweeper_sweeps",  # `on` a label no one has
        'frobnicate(sweeper_sweeps{state="x"})',  # unknown function: refused, not skipped
        '{__name__=~"sweeper_.*"}',  # no metric name to check
        "sweeper_sweeps{state=$state}",  # a variable outside a string
    ]
    for expr in wrong:
        assert problems_in(expr, "wrong", scraped), expr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path: Path) -> None:
    """Prometheus' own parser, where it is installed: the rules, and each dashboard query (Grafana's
    variables filled in) as a recording rule."""
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    recording = [
        {
            "record": f"dashboard:query_{n}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$job", "sweeper"),
        }
        for n, (_, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def _metrics(port: int) -> str | None:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except httpx.TransportError:
        return None
    return answer.text if answer.status_code == 200 else None


def test_every_metric_and_label_the_dashboard_and_the_alerts_use_is_exported(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A real daemon's scrape after it swept a deposit (so per-token series exist) and refused a
    callback (so per-result series exist): labelled series appear only once they have a value."""
    with sandbox() as box:
        box.control.credit_usdt(WALLET.address(0), 25_000_000)
        callback_port, metrics_port = free_port(), free_port()
        config = write_config(tmp_path, sqlite_url, box, hd_count=1, listen_port=callback_port)
        config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        run_sweeper(config, box, "migrate")
        log = tmp_path / "daemon.log"
        daemon = start_sweeper(config, box, "run", log=log)
        try:
            wait_until(lambda: _metrics(metrics_port), timeout=60, what="/metrics")
            forged = httpx.post(
                f"http://127.0.0.1:{callback_port}/callback",
                content=b'{"serial": "x"}',
                headers={"TIMESTAMP": "1", "SIGNATURE": "0" * 64},
                timeout=5,
            )
            assert forged.status_code == 401
            text = wait_until(
                lambda: (t := _metrics(metrics_port)) and "sweeper_swept_base_units_total{" in t and t,
                timeout=120,
                what="a confirmed sweep in the ledger gauges",
            )
        finally:
            daemon.terminate()
            daemon.wait(20)
    assert "Traceback" not in log.read_text()

    scraped = scraped_labels(text)
    # The cap next to today's spend (issue 18): safety.max_daily_spend_trx's default, 500 TRX, in sun.
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["sweeper_daily_cap_sun"] == 500_000_000
    expressions = dashboard_expressions() + rule_expressions()
    assert len(expressions) > 30
    problems = [p for where, expr in expressions for p in problems_in(expr, where, scraped)]
    assert not problems, "\n".join(problems)
    # Every metric the daemon exports is on the dashboard or in an alert (the *_created twins aside).
    used = {metric for _, expr in expressions for metric, _ in promql_references(expr).selectors}
    unused = {
        name for name in scraped if name.startswith("sweeper_") and not name.endswith("_created")
    } - used
    assert unused <= {"sweeper_follow_next_block", "sweeper_follow_solid_head"}, unused
