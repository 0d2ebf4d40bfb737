#!/usr/bin/env bash
# Wait until every Deployment of applied manifests has rolled out (deploy.yml):
#
#   .github/scripts/rollout-status.sh MANIFESTS.yaml [TIMEOUT]
#
# Fails (exit 1) when one does not become available within TIMEOUT (default 10m).
set -euo pipefail

manifests=$1 timeout=${2:-10m}
kubectl get -f "$manifests" \
    -o jsonpath='{range .items[?(@.kind=="Deployment")]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' |
    while read -r namespace name; do
        [[ -n $name ]] || continue
        kubectl -n "$namespace" rollout status "deployment/$name" --timeout="$timeout"
    done
