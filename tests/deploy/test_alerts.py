"""The production overlay's alerts (PrometheusRule `wallet`), checked offline.

kubernetes-validate has no schema for the Prometheus Operator's CRD, so its shape is asserted
here; `promtool check rules` (Debian's `prometheus` package, which `make test` installs as root)
parses every expression and template, and `promtool test rules` feeds each alert series that
must fire it and series that must not. Every metric an expression reads is one the service
exports, as a `/metrics` scrape of it names it (Litestar's middleware configured as api/app.py
configures it, and core/metrics.py), or a standard kube-state-metrics one; the label values the
expressions match are the ones the code sets.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "k8s" / "overlays" / "production"
RULE_FILE = OVERLAY / "prometheusrule.yaml"
CRONJOB_FILE = OVERLAY / "verify-cronjob.yaml"
README = ROOT / "README.md"

# kube-state-metrics' standard metrics the rules may read, with their labels (its docs,
# docs/metrics/workload/job-metrics.md and cronjob-metrics.md; both STABLE).
KUBE_STATE_METRICS = {
    "kube_job_failed": {"namespace", "job_name", "condition"},
    "kube_cronjob_status_last_successful_time": {"namespace", "cronjob"},
}
# What every rule reads: a rule that stops reading one of the README's metrics fails here.
EXPECTED_METRICS = {
    "wallet_requests_total",
    "wallet_request_duration_seconds_bucket",
    "wallet_db_pool_connections",
    "wallet_money_movements_total",
    "wallet_scheduled_deposits_overdue",
    *KUBE_STATE_METRICS,
}
# The README's alert table names these (the request metrics without the _bucket suffix).
README_METRICS = {
    "wallet_requests_total",
    "wallet_request_duration_seconds",
    "wallet_db_pool_connections",
    "wallet_money_movements_total",
    "wallet_scheduled_deposits_overdue",
}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
SEVERITIES = {"critical", "warning"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "atan2",
}
# What a scrape of the service shows: the names and labels of every sample, from a process
# that builds the app as `wallet serve` does, passes one request through its Prometheus
# middleware and gives each metric of core/metrics.py one child.
SCRAPE = textwrap.dedent(
    """
    import asyncio, json
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.metrics import MetricWrapperBase
    from litestar.plugins.prometheus import PrometheusMiddleware
    import core.metrics
    from api.app import create_app
    from core.settings import load_settings

    app = create_app(load_settings({"WALLET_JWT_SECRET": "x" * 32}))
    (define,) = [m for m in app.middleware if getattr(m, "middleware", None) is PrometheusMiddleware]

    async def failing(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    scope = {
        "type": "http", "method": "POST", "path": "/v1/transfers", "path_template": "/v1/transfers",
        "raw_path": b"/v1/transfers", "root_path": "", "scheme": "http", "server": ("wallet", 80),
        "headers": [], "query_string": b"", "app": app, "litestar_app": app, "state": {},
    }
    asyncio.run(PrometheusMiddleware(failing, define.kwargs["config"])(scope, receive, send))
    for metric in vars(core.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
            getattr(child, {"counter": "inc", "gauge": "set", "histogram": "observe"}[metric._type])(1)
    exported = {}
    text = prometheus_client.generate_latest().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    print(json.dumps({
        "metrics": {name: sorted(labels) for name, labels in exported.items()},
        "routes": sorted(route.path for route in app.routes),
        "group_path": define.kwargs["config"].group_path,
    }))
    """
)


def _rule_object() -> dict[str, Any]:
    (rule,) = [item for item in yaml.safe_load_all(RULE_FILE.read_text()) if item]
    return rule


def _groups() -> list[dict[str, Any]]:
    return copy.deepcopy(_rule_object()["spec"]["groups"])


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"]]


def _cronjob_name() -> str:
    (cronjob,) = [item for item in yaml.safe_load_all(CRONJOB_FILE.read_text()) if item]
    assert cronjob["kind"] == "CronJob"
    return cronjob["metadata"]["name"]


def _selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, operator, value)]) of every vector selector of a PromQL expression."""
    found = []
    braces = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
    for match in braces.finditer(expr):
        matchers = re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', match[2])
        found.append((match[1] or "", matchers))
    # Bare names: what is left once braces, grouping lists, ranges and strings are gone, and
    # is neither a function (followed by a parenthesis) nor a keyword.
    bare = braces.sub(lambda match: f" {match[1] or ''}__selector__ ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\[[^\]]*\]|\"[^\"]*\"", " ", bare)
    for name in re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", bare):
        if name not in PROMQL_KEYWORDS and not name.endswith("__selector__"):
            found.append((name, []))
    return found


def _metrics_of(expr: str) -> set[str]:
    names = {name for name, _ in _selectors(expr)}
    assert "" not in names, f"a selector without a metric name: {expr}"
    return names


@pytest.fixture(scope="module")
def scrape() -> dict[str, Any]:
    """What the SCRAPE process reports: metrics (sample name -> label names), the app's routes and
    whether the middleware labels requests by route template."""
    result = subprocess.run(
        [sys.executable, "-c", SCRAPE], capture_output=True, text=True, cwd=ROOT, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian's `prometheus` package; `make test` installs it as root)")
    return promtool


# The object -------------------------------------------------------------------------------------


def test_the_overlay_ships_the_rules():
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert RULE_FILE.name in kustomization["resources"]
    assert CRONJOB_FILE.name in kustomization["resources"]


def test_the_rule_object_has_the_operators_shape():
    rule = _rule_object()
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rule["metadata"]["name"])
    assert "namespace" not in rule["metadata"], "the overlay's kustomization sets it"
    assert set(rule["spec"]) == {"groups"}
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), names
    alerts = []
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert group["rules"], group["name"]
        for entry in group["rules"]:
            assert set(entry) <= RULE_KEYS, (entry.get("alert"), set(entry) - RULE_KEYS)
            assert isinstance(entry["alert"], str) and re.fullmatch(r"[A-Z][A-Za-z0-9]+", entry["alert"])
            assert isinstance(entry["expr"], str) and entry["expr"].strip()
            if "for" in entry:
                assert re.fullmatch(r"(\d+[smhdwy])+", entry["for"]), entry["for"]
            assert entry["labels"]["severity"] in SEVERITIES, entry["alert"]
            assert all(isinstance(value, str) for value in entry["labels"].values())
            assert {"summary", "description"} <= set(entry["annotations"]), entry["alert"]
            alerts.append(entry["alert"])
    assert len(alerts) == len(set(alerts)), alerts


# What the expressions read ---------------------------------------------------------------------


def test_the_selector_parser_finds_every_metric():
    expr = (
        'sum by (namespace, le) (rate(a_total{x="1", y=~"5.."}[5m])) / ignoring (state) b'
        " and on (job) c offset 5m > bool 2 unless histogram_quantile(0.99, d_bucket) or time() - e"
    )
    assert _metrics_of(expr) == {"a_total", "b", "c", "d_bucket", "e"}
    assert ("a_total", [("x", "=", "1"), ("y", "=~", "5..")]) in _selectors(expr)


def test_the_rules_read_the_readmes_metrics_and_kube_state_metrics_only():
    used = set().union(*(_metrics_of(rule["expr"]) for rule in _rules()))
    assert used == EXPECTED_METRICS
    readme = README.read_text()
    section = readme[readme.index("### What to alert on") :]
    section = section[: section.index("\n### ", 1)]
    for name in README_METRICS | set(KUBE_STATE_METRICS):
        assert f"`{name}" in section, name


def test_every_metric_and_label_the_rules_read_is_one_the_service_exports(scrape):
    known = {name: set(labels) for name, labels in scrape["metrics"].items()}
    known.update(KUBE_STATE_METRICS)
    for rule in _rules():
        for name, matchers in _selectors(rule["expr"]):
            assert name in known, f"{rule['alert']}: {name} is neither exported nor kube-state-metrics'"
            for label, _, _ in matchers:
                assert label in known[name], f"{rule['alert']}: {name} has no label {label}"


def _label_values_set_in_code(metric: str, source: str) -> set[str]:
    calls = re.findall(rf"\b{metric}\.labels\(([^)]*)\)", (ROOT / source).read_text())
    return {value for call in calls for value in re.findall(r'"([^"]*)"', call)}


def test_the_label_values_the_rules_match_are_set_by_the_code():
    pool_states = _label_values_set_in_code("POOL_CONNECTIONS", "api/lifespan.py")
    outcomes = _label_values_set_in_code("MOVEMENTS", "core/ledger.py")
    assert {"in_use", "max"} <= pool_states and "error" in outcomes
    for rule in _rules():
        for name, matchers in _selectors(rule["expr"]):
            for label, operator, value in matchers:
                if (name, label, operator) == ("wallet_db_pool_connections", "state", "="):
                    assert value in pool_states, rule["alert"]
                if (name, label, operator) == ("wallet_money_movements_total", "outcome", "="):
                    assert value in outcomes, rule["alert"]


def test_the_paths_the_rules_leave_out_are_routes_of_the_api(scrape):
    """The middleware labels requests by route template (group_path=True in api/app.py)."""
    assert scrape["group_path"] is True
    paths = {
        value
        for rule in _rules()
        for name, matchers in _selectors(rule["expr"])
        for label, _, value in matchers
        if label == "path"
    }
    assert paths == {"/v1/ledger/verify"}
    assert paths <= set(scrape["routes"])


def test_the_verify_alerts_watch_the_overlays_cronjob():
    name = _cronjob_name()
    watched = {
        (metric, label, operator, value)
        for rule in _rules()
        for metric, matchers in _selectors(rule["expr"])
        if metric in KUBE_STATE_METRICS
        for label, operator, value in matchers
        if label in {"job_name", "cronjob"}
    }
    assert watched == {
        ("kube_job_failed", "job_name", "=~", f"{name}-[0-9]+"),
        ("kube_cronjob_status_last_successful_time", "cronjob", "=", name),
    }


# promtool -----------------------------------------------------------------------------------------


def test_promtool_checks_the_rules(tmp_path):
    promtool = _promtool()
    rules = tmp_path / "wallet.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _groups()}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout, result.stdout


def test_promtool_rejects_a_broken_expression(tmp_path):
    """The check above would catch a typo."""
    promtool = _promtool()
    groups = _groups()
    groups[0]["rules"][0]["expr"] = "sum by (namespace (rate(wallet_requests_total[5m]))"
    rules = tmp_path / "broken.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


W = 'namespace="wallet", pod="wallet-api-1", app_name="wallet"'
API = f'{W}, method="POST", path="/v1/transfers"'
VERIFY = f'{W}, method="GET", path="/v1/ledger/verify"'
KSM = 'namespace="wallet", job="kube-state-metrics"'
CLIENT_ERROR = "insufficient_funds"  # a known error code: the client's, not an alert


def _bucket_series(labels: str, fast: int, slow: int) -> list[dict[str, str]]:
    """Histogram buckets growing by `fast` requests under 0.1 s and `slow` ones of 0.75-1 s a minute."""
    series = []
    for le, per_minute in (("0.1", fast), ("0.5", fast), ("1.0", fast + slow), ("+Inf", fast + slow)):
        series.append(
            {
                "series": f'wallet_request_duration_seconds_bucket{{{labels}, status_code="200", le="{le}"}}',
                "values": f"0+{per_minute}x30",
            }
        )
    return series


# Each alert: (name, input series, minute of evaluation, labels of the alerts expected then).
UNIT_TESTS = [
    (
        "WalletApiErrorRatioHigh",
        [
            {"series": f'wallet_requests_total{{{API}, status_code="200"}}', "values": "0+95x20"},
            {"series": f'wallet_requests_total{{{API}, status_code="500"}}', "values": "0+5x20"},
        ],
        12,
        [{"severity": "critical", "namespace": "wallet"}],
    ),
    (
        "WalletApiErrorRatioHigh",
        [
            {"series": f'wallet_requests_total{{{API}, status_code="200"}}', "values": "0+995x20"},
            {"series": f'wallet_requests_total{{{API}, status_code="500"}}', "values": "0+5x20"},
        ],
        12,
        [],
    ),
    (
        "WalletApiUnavailable",
        [{"series": f'wallet_requests_total{{{API}, status_code="503"}}', "values": "0 0 0 1 1 1"}],
        4,
        [{"severity": "warning", "namespace": "wallet"}],
    ),
    (
        "WalletApiUnavailable",
        [{"series": f'wallet_requests_total{{{VERIFY}, status_code="503"}}', "values": "0 0 0 1 1 1"}],
        4,
        [],
    ),
    (
        "WalletApiLatencyHigh",
        _bucket_series(API, 90, 10),
        12,
        [{"severity": "warning", "namespace": "wallet"}],
    ),
    ("WalletApiLatencyHigh", _bucket_series(API, 999, 1), 12, []),
    ("WalletApiLatencyHigh", _bucket_series(API, 999, 0) + _bucket_series(VERIFY, 0, 5), 12, []),
    (
        "WalletDbPoolSaturated",
        [
            {"series": f'wallet_db_pool_connections{{{W}, state="in_use"}}', "values": "10x10"},
            {"series": f'wallet_db_pool_connections{{{W}, state="max"}}', "values": "10x10"},
        ],
        7,
        [{"severity": "warning", "namespace": "wallet", "pod": "wallet-api-1", "app_name": "wallet"}],
    ),
    (
        "WalletDbPoolSaturated",
        [
            {"series": f'wallet_db_pool_connections{{{W}, state="in_use"}}', "values": "8x10"},
            {"series": f'wallet_db_pool_connections{{{W}, state="max"}}', "values": "10x10"},
        ],
        7,
        [],
    ),
    # Overdue for 5 minutes on one pod's view (another pod reports 0): fires; overdue for 3: quiet.
    (
        "WalletSettlementOverdue",
        [
            {"series": f"wallet_scheduled_deposits_overdue{{{W}}}", "values": "0x3 4x10"},
            {
                "series": 'wallet_scheduled_deposits_overdue{namespace="wallet", pod="wallet-api-2"}',
                "values": "0x13",
            },
        ],
        10,
        [{"severity": "critical", "namespace": "wallet"}],
    ),
    (
        "WalletSettlementOverdue",
        [{"series": f"wallet_scheduled_deposits_overdue{{{W}}}", "values": "0x8 2x3 0x5"}],
        11,
        [],
    ),
    # A pod's first error: the series appears at minute 10 already at 1.
    (
        "WalletMoneyMovementErrors",
        [
            {
                "series": f'wallet_money_movements_total{{{W}, kind="transfer", outcome="error"}}',
                "values": "_x9 1x10",
            }
        ],
        11,
        [{"severity": "critical", "namespace": "wallet", "kind": "transfer"}],
    ),
    # More errors on a series that existed.
    (
        "WalletMoneyMovementErrors",
        [
            {
                "series": f'wallet_money_movements_total{{{W}, kind="deposit", outcome="error"}}',
                "values": "3x10 4x10",
            }
        ],
        12,
        [{"severity": "critical", "namespace": "wallet", "kind": "deposit"}],
    ),
    # Old errors only, and known error codes: no alert.
    (
        "WalletMoneyMovementErrors",
        [
            {
                "series": f'wallet_money_movements_total{{{W}, kind="deposit", outcome="error"}}',
                "values": "3x30",
            },
            {
                "series": f'wallet_money_movements_total{{{W}, kind="withdrawal", outcome="{CLIENT_ERROR}"}}',
                "values": "0+5x30",
            },
        ],
        20,
        [],
    ),
    (
        "WalletLedgerVerifyFailed",
        [
            {
                "series": f'kube_job_failed{{{KSM}, job_name="wallet-verify-29170710", condition="true"}}',
                "values": "1x5",
            },
            {
                "series": f'kube_job_failed{{{KSM}, job_name="wallet-verify-29170710", condition="false"}}',
                "values": "0x5",
            },
        ],
        2,
        [{"severity": "critical", "namespace": "wallet", "job_name": "wallet-verify-29170710"}],
    ),
    (
        "WalletLedgerVerifyFailed",
        [
            {
                "series": f'kube_job_failed{{{KSM}, job_name="wallet-verify-29170710", condition="true"}}',
                "values": "0x5",
            },
            {
                "series": f'kube_job_failed{{{KSM}, job_name="wallet-migrate", condition="true"}}',
                "values": "1x5",
            },
        ],
        2,
        [],
    ),
]
# Over a day (the series start at 0, the Unix epoch, so time() is the seconds since).
DAILY_TESTS = [
    (
        "WalletLedgerVerifyNotRecent",
        [
            {
                "series": f'kube_cronjob_status_last_successful_time{{{KSM}, cronjob="wallet-verify"}}',
                "values": "0x1800",
            }
        ],
        28 * 60,
        [{"severity": "warning", "namespace": "wallet", "cronjob": "wallet-verify"}],
    ),
    (
        "WalletLedgerVerifyNotRecent",
        [
            {
                "series": f'kube_cronjob_status_last_successful_time{{{KSM}, cronjob="wallet-verify"}}',
                "values": "0x1800",
            }
        ],
        26 * 60 + 30,
        [],
    ),
]


def _unit_test(case: tuple[str, list[dict[str, str]], int, list[dict[str, str]]]) -> dict:
    alert, series, minute, expected = case
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {
                "eval_time": f"{minute}m",
                "alertname": alert,
                "exp_alerts": [{"exp_labels": labels} for labels in expected],
            }
        ],
    }


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases = UNIT_TESTS + DAILY_TESTS
    for rule in _rules():
        outcomes = {bool(expected) for alert, _, _, expected in cases if alert == rule["alert"]}
        assert outcomes == {True, False}, rule["alert"]


def test_promtool_unit_tests_fire_each_alert_on_its_series_and_only_there(tmp_path):
    """The logic of each expression against series a scrape would show; the annotations are
    left out here (promtool compares them too), `check rules` has parsed their templates."""
    promtool = _promtool()
    groups = _groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "wallet.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    tests = {
        "rule_files": ["wallet.rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [_unit_test(case) for case in UNIT_TESTS + DAILY_TESTS],
    }
    (tmp_path / "wallet.tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", "wallet.tests.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
