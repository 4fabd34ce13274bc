"""Writes modelstamp.json, the Grafana dashboard (run: python3 build_dashboard.py). Kept as code
so panels stay consistent; the JSON is what Grafana provisions and what the e2e suite checks
(it also checks that the committed JSON is this script's output)."""

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model="$model",version=~"$version"'


def target(expr, legend, ref="A", exemplar=False, fmt=None, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "exemplar": exemplar}
    if fmt:
        t["format"] = fmt
    if instant:
        t["instant"], t["range"] = True, False
    return t


def panel(pid, title, kind, targets, x, y, w=12, h=8, unit=None, desc="", **extra):
    p = {"id": pid, "title": title, "type": kind, "datasource": DS, "targets": targets,
         "gridPos": {"x": x, "y": y, "w": w, "h": h}, "description": desc,
         "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []}, "options": {}}
    p.update(extra)
    return p


def variable(name, query, multi=False, include_all=False, label=None):
    return {"name": name, "label": label or name, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "multi": multi, "includeAll": include_all, "allValue": ".*" if include_all else None,
            "current": {}, "sort": 1}


panels = [
    panel(1, "Live versions and their lineage", "table",
          [target('modelstamp_model_version_info{model="$model"} * on (model, version) group_left () '
                  '(sum by (model, version) (rate(modelstamp_requests_total{model="$model"}[$__rate_interval])) > 0)',
                  "", fmt="table", instant=True)],
          0, 0, w=24, h=6,
          desc="Versions serving traffic now, joined to their registry record. Click a lineage ID for the record.",
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True, "instance": True}}}],
          fieldConfig={"defaults": {}, "overrides": [{
              "matcher": {"id": "byName", "options": "lineage_id"},
              "properties": [{"id": "links", "value": [{
                  "title": "Lineage record",
                  "url": "${admin_url}/lineage/${__value.raw}", "targetBlank": True}]}]}]}),
    panel(2, "Requests per version", "timeseries",
          [target(f'sum by (version) (rate(modelstamp_requests_total{{{SEL}}}[$__rate_interval]))', "v{{version}}")],
          0, 6, unit="reqps"),
    panel(3, "Error ratio per version", "timeseries",
          [target(f'sum by (version) (rate(modelstamp_requests_total{{{SEL},status_class="5xx"}}[$__rate_interval])) '
                  f'/ sum by (version) (rate(modelstamp_requests_total{{{SEL}}}[$__rate_interval]))', "v{{version}}")],
          12, 6, unit="percentunit"),
    panel(4, "Latency p50 / p99 per version (exemplars link to traces)", "timeseries",
          [target(f'histogram_quantile(0.5, sum by (version, le) (rate(modelstamp_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))',
                  "p50 v{{version}}", "A", exemplar=True),
           target(f'histogram_quantile(0.99, sum by (version, le) (rate(modelstamp_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))',
                  "p99 v{{version}}", "B", exemplar=True)],
          0, 14, w=24, unit="s"),
    panel(5, "Prediction distribution", "bargauge",
          [target(f'sum by (version, le) (increase(modelstamp_prediction_bucket{{{SEL}}}[$__range]))', "{{version}} le {{le}}",
                  fmt="heatmap", instant=True)],
          0, 22, desc="Cumulative bucket counts of numeric predictions over the range (buckets from the registry)."),
    panel(6, "Predictions per class", "timeseries",
          [target(f'sum by (version, class) (rate(modelstamp_prediction_class_total{{{SEL}}}[$__rate_interval]))', "v{{version}} {{class}}")],
          12, 22, unit="reqps"),
    panel(7, "Data-quality issues (share of rows)", "timeseries",
          [target(f'sum by (version, feature, issue) (rate(modelstamp_feature_issues_total{{{SEL}}}[$__rate_interval])) '
                  f'/ on (version) group_left () sum by (version) (rate(modelstamp_inspected_rows_total{{{SEL}}}[$__rate_interval]))',
                  "v{{version}} {{feature}} {{issue}}")],
          0, 30, unit="percentunit",
          desc="The WARN log line of each crossing names the feature's upstream source."),
    panel(8, "Drift (PSI) against the reference and other versions", "timeseries",
          [target(f'modelstamp_drift{{{SEL},statistic="psi"}}', "v{{version}} {{signal}} vs {{against}}")],
          12, 30, thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                             {"color": "orange", "value": 0.1},
                                                             {"color": "red", "value": 0.25}]}),
    panel(9, "Canary: error ratio, baseline vs candidate", "timeseries",
          [target('sum(rate(modelstamp_requests_total{model="$model",version="$baseline",status_class="5xx"}[$__rate_interval])) '
                  '/ sum(rate(modelstamp_requests_total{model="$model",version="$baseline"}[$__rate_interval]))', "baseline v$baseline", "A"),
           target('sum(rate(modelstamp_requests_total{model="$model",version="$candidate",status_class="5xx"}[$__rate_interval])) '
                  '/ sum(rate(modelstamp_requests_total{model="$model",version="$candidate"}[$__rate_interval]))', "candidate v$candidate", "B")],
          0, 38, unit="percentunit"),
    panel(10, "Canary: p99 latency, baseline vs candidate", "timeseries",
          [target('histogram_quantile(0.99, sum by (le) (rate(modelstamp_request_duration_seconds_bucket{model="$model",version="$baseline"}[$__rate_interval])))',
                  "baseline v$baseline", "A", exemplar=True),
           target('histogram_quantile(0.99, sum by (le) (rate(modelstamp_request_duration_seconds_bucket{model="$model",version="$candidate"}[$__rate_interval])))',
                  "candidate v$candidate", "B", exemplar=True)],
          12, 38, unit="s"),
    panel(11, "Canary: candidate's prediction drift against the baseline", "stat",
          [target('modelstamp_drift{model="$model",version="$candidate",signal="prediction",against="version:$baseline"}',
                  "{{statistic}}", instant=True)],
          0, 46, w=8, h=6),
    panel(12, "Version mismatch (model server reports another version)", "stat",
          [target('sum by (expected, reported) (increase(modelstamp_version_mismatch_total{model="$model"}[$__range]))',
                  "expected {{expected}} got {{reported}}", instant=True)],
          8, 46, w=8, h=6),
    panel(13, "Stale lineage (dataset has a newer digest)", "stat",
          [target('max by (version) (modelstamp_model_version_stale{model="$model"})', "v{{version}}", instant=True)],
          16, 46, w=8, h=6),
    panel(15, "Canary weights", "timeseries",
          [target('max by (route, version) (modelstamp_canary_weight)', "{{route}} v{{version}}")],
          0, 58, w=12, h=6, desc="Split weights; every change is in the audit log (GET /audit)."),
    panel(16, "Shadow agreement with the primary", "timeseries",
          [target('min by (baseline, candidate) (modelstamp_shadow_agreement_ratio{model="$model"})',
                  "v{{candidate}} vs v{{baseline}}")],
          12, 58, w=12, h=6, unit="percentunit"),
    panel(14, "Registry and inspection health", "timeseries",
          [target('min(modelstamp_registry_up)', "registry up", "A"),
           target('sum by (reason) (rate(modelstamp_inspect_skipped_total[$__rate_interval]))', "skipped {{reason}}", "B")],
          0, 52, w=24, h=6),
]

dashboard = {
    "uid": "modelstamp", "title": "modelstamp: model versions", "tags": ["modelstamp", "mlops"],
    "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
        {"name": "traces", "label": "Traces", "type": "datasource", "query": "tempo", "current": {},
         "description": "Where exemplar trace IDs lead (set as the exemplar destination of the Prometheus datasource)."},
        variable("model", 'label_values(modelstamp_model_version_info, model)'),
        variable("version", 'label_values(modelstamp_model_version_info{model="$model"}, version)', multi=True, include_all=True),
        variable("baseline", 'label_values(modelstamp_model_version_info{model="$model"}, version)', label="canary baseline"),
        variable("candidate", 'label_values(modelstamp_model_version_info{model="$model"}, version)', label="canary candidate"),
        {"name": "admin_url", "label": "modelstamp admin URL", "type": "textbox", "query": "http://localhost:9901",
         "current": {"text": "http://localhost:9901", "value": "http://localhost:9901"}},
    ]},
    "panels": panels,
}

if __name__ == "__main__":
    import sys
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("modelstamp.json")
    out.write_text(json.dumps(dashboard, indent=2) + "\n")
