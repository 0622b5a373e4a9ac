#!/usr/bin/env python3
"""Print base/prometheusrule.yaml: deploy/prometheus/alerts.yml as a PrometheusRule.

alerts.yml is the one source of the alert rules (compose's Prometheus loads it,
promtool tests it); the PrometheusRule carries the same text under `spec:`.
After editing alerts.yml:

    python3 deploy/k8s/render-prometheusrule.py > deploy/k8s/base/prometheusrule.yaml

tests/unit/test_deploy_manifests.py fails while the copy is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ALERTS = Path(__file__).resolve().parents[1] / "prometheus" / "alerts.yml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/render-prometheusrule.py:
# edit alerts.yml, then re-run the script (do not edit this copy).
# Prometheus must select it (its ruleSelector, e.g. `release: <name>` for
# kube-prometheus-stack: add that label in an overlay).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: chat
  labels:
    app.kubernetes.io/name: chat
    app.kubernetes.io/part-of: chat
spec:
"""


def render(alerts: str) -> str:
    body = "".join(f"  {line}" if line.strip() else "\n"
                   for line in alerts.splitlines(keepends=True))
    return HEADER + body


if __name__ == "__main__":
    sys.stdout.write(render(ALERTS.read_text()))
