#!/usr/bin/env python3
"""Writes the Grafana dashboards grafana/kubenurse.json and grafana/matrix.json.

Edit the panels here, then run `python3 grafana/generate.py`; tests/chart/test_dashboards.py
fails when a committed JSON file differs from what this script writes, and checks every
query with Prometheus' own parser and engine (promtool).

Labels the dashboards rely on: agent metrics get `node` (and, with the EndpointSlice role,
`zone`) from the chart's ServiceMonitor relabelings; the aggregator's matrix gauges carry
`src` and `dst`. Every replica of the aggregator exports the same matrix, so matrix queries
aggregate with max by (src, dst).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}

# Agent selectors (per-node dashboard).
SEL = 'node=~"$node", zone=~"$zone"'
SEL_TYPE = 'node=~"$node", zone=~"$zone", type=~"$type"'
# The check kinds' `type` labels as CheckKind (proto/src/kind.rs) defines them; the proto
# crate's tests/contracts.rs fails when these two lines drift from it.
PATH_PREFIX = "path_"
BUILT_IN_CHECKS = ("api_server_direct", "api_server_dns", "me_ingress", "me_service")
PATH_TYPES = PATH_PREFIX + ".*"

# A `check` label: the type, with every path_<node> grouped as "path".
CHECK_COPY = '"check", "$1", "type", "(.*)"'
CHECK_PATH = f'"check", "path", "type", "{PATH_TYPES}"'


class Board:
    """Lays panels out on Grafana's 24-column grid, top to bottom."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _add(self, panel: dict, w: int, h: int) -> None:
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = self._place(w, h)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self._add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0

    def timeseries(self, title: str, desc: str, targets: list[tuple[str, str]], *, unit: str = "short",
                   w: int = 12, h: int = 8, stack: bool = False) -> None:
        self._add({
            "type": "timeseries",
            "title": title,
            "description": desc,
            "datasource": DS,
            "fieldConfig": {
                "defaults": {
                    "unit": unit,
                    "min": 0,
                    "custom": {
                        "drawStyle": "line",
                        "lineWidth": 1,
                        "fillOpacity": 20 if stack else 5,
                        "showPoints": "never",
                        "spanNulls": False,
                        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                    },
                },
                "overrides": [],
            },
            "options": {
                "legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                           "calcs": ["mean", "max", "lastNotNull"], "sortBy": "Max", "sortDesc": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
            "targets": [_range_target(expr, legend, i) for i, (expr, legend) in enumerate(targets)],
        }, w, h)

    def stat(self, title: str, desc: str, expr: str, *, unit: str = "short", w: int = 4, h: int = 4,
             thresholds: list[tuple[float | None, str]] | None = None) -> None:
        steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
        self._add({
            "type": "stat",
            "title": title,
            "description": desc,
            "datasource": DS,
            "fieldConfig": {
                "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                             "color": {"mode": "thresholds"}},
                "overrides": [],
            },
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
                "orientation": "auto", "textMode": "auto",
            },
            "targets": [{**_range_target(expr, "", 0)}],
        }, w, h)

    def heatmap(self, title: str, desc: str, expr: str, *, w: int = 12, h: int = 8) -> None:
        self._add({
            "type": "heatmap",
            "title": title,
            "description": desc,
            "datasource": DS,
            "options": {
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Spectral", "reverse": True, "exponent": 0.5,
                          "steps": 64, "fill": "dark-orange", "scale": "exponential"},
                "yAxis": {"axisPlacement": "left", "unit": "s", "reverse": False},
                "rowsFrame": {"layout": "auto"},
                "tooltip": {"mode": "single", "yHistogram": True},
                "legend": {"show": True},
                "filterValues": {"le": 1e-9},
            },
            "fieldConfig": {"defaults": {}, "overrides": []},
            "targets": [{**_range_target(expr, "{{le}}", 0), "format": "heatmap"}],
        }, w, h)

    def matrix(self, title: str, desc: str, expr: str, *, unit: str, max_value: float | None = None,
               w: int = 12, h: int = 12) -> None:
        """A source x destination table, cells coloured by value (green → red)."""
        defaults: dict = {
            "unit": unit,
            "decimals": 3 if unit == "s" else 2,
            "min": 0,
            "color": {"mode": "continuous-GrYlRd"},
            "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            "custom": {"align": "center", "cellOptions": {"type": "color-background", "mode": "gradient"}},
        }
        if max_value is not None:
            defaults["max"] = max_value
        self._add({
            "type": "table",
            "title": title,
            "description": desc,
            "datasource": DS,
            "fieldConfig": {
                "defaults": defaults,
                "overrides": [{
                    "matcher": {"id": "byName", "options": "src\\dst"},
                    "properties": [{"id": "custom.cellOptions", "value": {"type": "auto"}},
                                   {"id": "displayName", "value": "source \\ destination"}],
                }],
            },
            "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
            "targets": [_instant_target(expr, 0)],
            "transformations": [{"id": "groupingToMatrix",
                                 "options": {"rowField": "src", "columnField": "dst", "valueField": "Value"}}],
        }, w, h)

    def table(self, title: str, desc: str, expr: str, *, unit: str = "short", w: int = 12, h: int = 8) -> None:
        self._add({
            "type": "table",
            "title": title,
            "description": desc,
            "datasource": DS,
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"align": "auto"}}, "overrides": []},
            "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False},
                        "sortBy": [{"displayName": "Value", "desc": True}]},
            "targets": [_instant_target(expr, 0)],
            "transformations": [{"id": "organize",
                                 "options": {"excludeByName": {"Time": True}, "renameByName": {}}}],
        }, w, h)


def _ref(i: int) -> str:
    return chr(ord("A") + i)


def _range_target(expr: str, legend: str, i: int) -> dict:
    return {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend,
            "range": True, "instant": False, "refId": _ref(i)}


def _instant_target(expr: str, i: int) -> dict:
    return {"datasource": DS, "editorMode": "code", "expr": expr, "format": "table",
            "range": False, "instant": True, "refId": _ref(i)}


def datasource_var() -> dict:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "skipUrlSync": False, "options": []}


def query_var(name: str, label: str, query: str, *, multi: bool = True) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0, "regex": "", "skipUrlSync": False, "options": [],
    }


def regex_var(name: str, label: str, options: list[tuple[str, str]]) -> dict:
    """A single-value custom variable whose values are regular expressions. Grafana escapes
    the values of multi-value and include-All variables, so this one is neither."""
    text, value = options[0]
    return {
        "name": name, "label": label, "type": "custom",
        "query": ",".join(f"{t} : {v}" for t, v in options),
        "multi": False, "includeAll": False,
        "current": {"selected": True, "text": text, "value": value},
        "options": [], "hide": 0, "skipUrlSync": False,
    }


def dashboard(uid: str, title: str, desc: str, tags: list[str], variables: list[dict], board: Board,
              links: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": desc,
        "tags": tags,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "links": links,
        "templating": {"list": variables},
        "panels": board.panels,
    }


def _q(quantile: str, metric: str, by: str, sel: str, *, as_check: bool = False) -> str:
    """histogram_quantile over the rate of a histogram's buckets, summed by `by` (and le)."""
    inner = f"rate({metric}_bucket{{{sel}}}[$__rate_interval])"
    if as_check:
        inner = f"label_replace(label_replace({inner}, {CHECK_COPY}), {CHECK_PATH})"
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({quantile}, sum by ({group}) ({inner}))"


def kubenurse_dashboard() -> dict:
    lat = "kubenurse_httpclient_request_duration_seconds"
    trace = "kubenurse_httpclient_trace_request_duration_seconds"
    b = Board()

    b.row("Overview")
    b.stat("Agents", "Agent pods exporting metrics (kubenurse_neighbourhood_incoming_checks).",
           f"count(count by (node, pod) (kubenurse_neighbourhood_incoming_checks{{{SEL}}}))")
    b.stat("Check rate", "Checks per second of the selected agents and check types.",
           f"sum(rate(kubenurse_httpclient_requests_total{{{SEL_TYPE}}}[$__rate_interval]))", unit="reqps")
    b.stat("Error ratio", "Failed share of checks (kubenurse_errors_total / requests).",
           f"sum(rate(kubenurse_errors_total{{{SEL_TYPE}}}[$__rate_interval])) / "
           f"sum(rate(kubenurse_httpclient_requests_total{{{SEL_TYPE}}}[$__rate_interval]))",
           unit="percentunit", thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")])
    b.stat("p99 latency", "99th percentile of all selected checks.",
           _q("0.99", lat, "", SEL_TYPE), unit="s",
           thresholds=[(None, "green"), (0.1, "orange"), (1, "red")])
    b.stat("Fewest incoming checks", "Lowest number of distinct neighbours that checked a node in the "
           "last minute; equals neighbour_limit on a healthy cluster larger than the limit.",
           f"min(kubenurse_neighbourhood_incoming_checks{{{SEL}}})")
    b.stat("Aggregator streams down", "Agents whose stream to the aggregator is down "
           "(kubenurse_aggregator_connected = 0; absent without an aggregator).",
           f"count(max by (node, pod) (kubenurse_aggregator_connected{{{SEL}}}) == 0) or vector(0)",
           thresholds=[(None, "green"), (1, "red")])

    b.row("Latency")
    b.timeseries("Latency by check type (p50, p90, p99)",
                 "Request duration percentiles per check type over the selected nodes; all path_<node> "
                 "checks are grouped as 'path'.",
                 [(_q(q, lat, "check", SEL_TYPE, as_check=True), f"p{q[2:]} {{{{check}}}}")
                  for q in ("0.5", "0.9", "0.99")],
                 unit="s", w=24)
    b.timeseries("p99 latency per node", "99th percentile per source node of the selected check types.",
                 [(_q("0.99", lat, "node", SEL_TYPE), "{{node}}")], unit="s")
    b.timeseries("p99 latency per destination (path checks)",
                 "99th percentile of the neighbour checks from the selected nodes, per destination node.",
                 [(_q("0.99", lat, "type", f'{SEL}, type=~"{PATH_TYPES}"'), "{{type}}")], unit="s")
    b.heatmap("Latency distribution", "Histogram of the selected checks' durations.",
              f"sum by (le) (increase({lat}_bucket{{{SEL_TYPE}}}[$__rate_interval]))")
    b.timeseries("p99 latency per check type and node",
                 "Like upstream kubenurse's 'Request Duration' panel, per node and check type.",
                 [(_q("0.99", lat, "node, type", SEL_TYPE), "{{node}}: {{type}}")], unit="s")

    b.row("Errors")
    b.timeseries("Error rate by event", "Failed checks per second by the phase that failed "
                 "(dns_start … got_first_resp_byte, status_code_<N>, round_trip_error, token_error).",
                 [(f"sum by (event) (rate(kubenurse_errors_total{{{SEL_TYPE}}}[$__rate_interval]))", "{{event}}")],
                 unit="reqps", stack=True)
    b.timeseries("Error rate by node and check", "Failed checks per second per node and check type.",
                 [(f"sum by (node, type) (rate(kubenurse_errors_total{{{SEL_TYPE}}}[$__rate_interval]))",
                   "{{node}}: {{type}}")], unit="reqps")
    b.timeseries("Requests by code", "Checks per second by HTTP status (or round_trip_error).",
                 [(f"sum by (code) (rate(kubenurse_httpclient_requests_total{{{SEL_TYPE}}}[$__rate_interval]))",
                   "{{code}}")], unit="reqps", stack=True)
    b.timeseries("Errors over 2 minutes", "Upstream kubenurse's error panel: errors in the last 2 minutes "
                 "per node and check type.",
                 [(f"sum by (node, type) (increase(kubenurse_errors_total{{{SEL_TYPE}}}[2m]))",
                   "{{node}}: {{type}}")])

    b.row("Request phases")
    b.timeseries("Request phases (p90, time since request start)",
                 "When each phase was reached, 90th percentile: DNS, connect, TLS, connection, request "
                 "written, first response byte.",
                 [(_q("0.9", trace, "event", SEL_TYPE), "{{event}}")], unit="s")
    b.timeseries("Request phases (p99, time since request start)", "As left, 99th percentile.",
                 [(_q("0.99", trace, "event", SEL_TYPE), "{{event}}")], unit="s")

    b.row("Neighbourhood")
    b.timeseries("Incoming checks per node", "Distinct neighbours that checked each node in the last "
                 "60 s (kubenurse_neighbourhood_incoming_checks).",
                 [(f"max by (node) (kubenurse_neighbourhood_incoming_checks{{{SEL}}})", "{{node}}")])
    b.table("Nodes with the fewest incoming checks", "Current value, lowest first.",
            f"bottomk(20, max by (node) (kubenurse_neighbourhood_incoming_checks{{{SEL}}}))")
    b.timeseries("Aggregator streams per node", "Connected streams to aggregator replicas "
                 "(kubenurse_aggregator_connected).",
                 [(f"max by (node) (kubenurse_aggregator_connected{{{SEL}}})", "{{node}}")])
    b.timeseries("Results dropped by the uplink", "Results an agent dropped because a replica's queue "
                 "was full.",
                 [(f"sum by (node) (rate(kubenurse_aggregator_dropped_results_total{{{SEL}}}[$__rate_interval]))",
                   "{{node}}")], unit="reqps")

    # Last, so the panels above keep their ids (links to single panels).
    b.row("UDP loss")
    b.timeseries("UDP loss ratio per path", "Lost share of the UDP echo packets from the selected nodes, per "
                 "destination (kubenurse_udp_packets_lost_total / kubenurse_udp_packets_sent_total; "
                 "udp.enabled).",
                 [(f"sum by (type) (rate(kubenurse_udp_packets_lost_total{{{SEL_TYPE}}}[$__rate_interval])) / "
                   f"sum by (type) (rate(kubenurse_udp_packets_sent_total{{{SEL_TYPE}}}[$__rate_interval]))",
                   "{{type}}")], unit="percentunit")
    b.timeseries("UDP RTT p99 per path", "99th percentile round-trip time of the answered UDP echo packets, per "
                 "destination (kubenurse_udp_rtt_seconds).",
                 [(_q("0.99", "kubenurse_udp_rtt_seconds", "type", SEL_TYPE), "{{type}}")], unit="s")
    b.timeseries("TCP SYN retransmits", "SYN retransmissions per second of the checks' new connections, per "
                 "check type (kubenurse_tcp_syn_retransmits_total): packet loss on the TCP path.",
                 [(f"sum by (type) (rate(kubenurse_tcp_syn_retransmits_total{{{SEL_TYPE}}}[$__rate_interval]))",
                   "{{type}}")], unit="pps", w=24)

    variables = [
        datasource_var(),
        query_var("zone", "Zone", "label_values(kubenurse_httpclient_requests_total, zone)"),
        query_var("node", "Node", 'label_values(kubenurse_httpclient_requests_total{zone=~"$zone"}, node)'),
        regex_var("type", "Check", [("all", ".*"), *((c, c) for c in BUILT_IN_CHECKS),
                                    (PATH_PREFIX + "<node>", PATH_TYPES)]),
    ]
    links = [{"title": "Cluster matrix", "type": "dashboards", "tags": ["kubenurse-matrix"],
              "asDropdown": False, "includeVars": False, "keepTime": True, "targetBlank": False,
              "icon": "dashboard", "tooltip": "", "url": ""}]
    return dashboard("kubenurse-rs-nodes", "kubenurse", "Per-node view of the kubenurse agents' checks "
                     "(upstream kubenurse metrics).", ["kubenurse", "kubenurse-nodes"], variables, b, links)


def matrix_dashboard() -> dict:
    # Rows or columns of the selected nodes; sources in other zones are left out (the zone
    # comes from the agents' metrics, so with no zone label nothing is left out).
    other_zones = ('label_replace(group by (node) (kubenurse_neighbourhood_incoming_checks{zone!~"$zone"}), '
                   '"src", "$1", "node", "(.+)")')

    def cells(metric: str) -> str:
        return (f'(max by (src, dst) ({metric}{{src=~"$node"}} or {metric}{{dst=~"$node"}}) '
                f"unless on (src) {other_zones})")

    b = Board()
    b.row("Aggregator")
    b.stat("Agents connected", "Agents streaming to the aggregator (highest over the replicas).",
           "max(kubenurse_aggregator_connected_agents)")
    b.stat("Suspects", "Current fault suspects (source, destination, node, zone, cluster).",
           "sum(max by (kind, cause) (kubenurse_aggregator_suspects)) or vector(0)",
           thresholds=[(None, "green"), (1, "red")])
    b.stat("Matrix cells", "Source-destination cells in the matrix.", "max(kubenurse_aggregator_matrix_cells)")
    b.stat("Results ingested", "Check results recorded per second (highest over the replicas).",
           "max(rate(kubenurse_aggregator_results_ingested_total[5m]))", unit="reqps")
    b.stat("Ingest errors", "Results or streams refused per second, all reasons.",
           "sum(rate(kubenurse_aggregator_ingest_errors_total[5m])) or vector(0)", unit="reqps",
           thresholds=[(None, "green"), (0.001, "orange")])
    b.stat("Worst path error ratio", "Highest error ratio of any cell over the window.",
           f"max({cells('kubenurse_matrix_error_ratio')})", unit="percentunit",
           thresholds=[(None, "green"), (0.01, "orange"), (0.1, "red")])

    b.row("Matrix (rows: source node, columns: destination node)")
    b.matrix("p99 latency", "99th percentile of the path checks from the row's node to the column's node "
             "over the aggregator's window (kubenurse_matrix_p99_seconds).",
             cells("kubenurse_matrix_p99_seconds"), unit="s")
    b.matrix("Error ratio", "Failed share of the path checks over the window (kubenurse_matrix_error_ratio).",
             cells("kubenurse_matrix_error_ratio"), unit="percentunit", max_value=1)
    b.matrix("p50 latency", "Median of the path checks over the window (kubenurse_matrix_p50_seconds).",
             cells("kubenurse_matrix_p50_seconds"), unit="s")
    b.table("Worst paths by error ratio", "The 20 cells with the highest error ratio.",
            f"topk(20, {cells('kubenurse_matrix_error_ratio')} > 0)", unit="percentunit", h=12)

    b.row("Over time")
    b.timeseries("Slowest paths (p99)", "The 10 cells with the highest p99 at each step.",
                 [(f"topk(10, {cells('kubenurse_matrix_p99_seconds')})", "{{src}} → {{dst}}")], unit="s")
    b.timeseries("Failing paths (error ratio)", "The 10 cells with the highest error ratio at each step.",
                 [(f"topk(10, {cells('kubenurse_matrix_error_ratio')} > 0)", "{{src}} → {{dst}}")],
                 unit="percentunit")
    b.timeseries("Suspects by kind and cause", "kubenurse_aggregator_suspects: kind is source, "
                 "destination, node, zone or cluster; cause is errors or latency.",
                 [("max by (kind, cause) (kubenurse_aggregator_suspects)", "{{kind}} ({{cause}})")], stack=True)
    b.timeseries("Agents connected per replica", "Every replica should see every agent.",
                 [("max by (pod) (kubenurse_aggregator_connected_agents)", "{{pod}}")])
    b.timeseries("Results ingested per replica", "Check results recorded per second.",
                 [("sum by (pod) (rate(kubenurse_aggregator_results_ingested_total[5m]))", "{{pod}}")],
                 unit="reqps")
    b.timeseries("Ingest errors by reason", "Results or streams refused per second, by reason.",
                 [("sum by (reason) (rate(kubenurse_aggregator_ingest_errors_total[$__rate_interval]))",
                   "{{reason}}")], unit="reqps", stack=True)
    b.timeseries("Matrix cells", "Source-destination cells per replica (about nodes × neighbour_limit).",
                 [("max by (pod) (kubenurse_aggregator_matrix_cells)", "{{pod}}")])

    # Last, so the panels above keep their ids (links to single panels).
    b.row("UDP loss (rows: source node, columns: destination node)")
    b.matrix("UDP loss ratio", "Lost share of the UDP echo packets from the row's node to the column's node over "
             "the window (kubenurse_matrix_loss_ratio; agents with udp.enabled).",
             cells("kubenurse_matrix_loss_ratio"), unit="percentunit", max_value=1)
    b.table("Worst paths by UDP loss", "The 20 cells with the highest UDP loss ratio.",
            f"topk(20, {cells('kubenurse_matrix_loss_ratio')} > 0)", unit="percentunit", h=12)
    b.timeseries("Lossy paths (UDP loss ratio)", "The 10 cells with the highest UDP loss ratio at each step.",
                 [(f"topk(10, {cells('kubenurse_matrix_loss_ratio')} > 0)", "{{src}} → {{dst}}")],
                 unit="percentunit", w=24)

    variables = [
        datasource_var(),
        query_var("zone", "Zone (sources)", "label_values(kubenurse_neighbourhood_incoming_checks, zone)"),
        query_var("node", "Node", "label_values(kubenurse_matrix_p99_seconds, src)"),
    ]
    links = [{"title": "Per-node view", "type": "dashboards", "tags": ["kubenurse-nodes"],
              "asDropdown": False, "includeVars": False, "keepTime": True, "targetBlank": False,
              "icon": "dashboard", "tooltip": "", "url": ""}]
    return dashboard("kubenurse-rs-matrix", "kubenurse matrix", "Cluster view from the kubenurse aggregator: "
                     "node × node latency, errors and UDP loss, suspects, ingest.", ["kubenurse", "kubenurse-matrix"],
                     variables, b, links)


DASHBOARDS = {"kubenurse.json": kubenurse_dashboard, "matrix.json": matrix_dashboard}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    for name in DASHBOARDS:
        (HERE / name).write_text(render(name), encoding="utf-8")
        print(f"wrote grafana/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
