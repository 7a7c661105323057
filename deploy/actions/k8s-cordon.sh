#!/bin/sh
# capwatch exec receiver: cordon the nodes of a notification in Kubernetes (uncordon them
# when it resolves, with CAPWATCH_RESUME=1).
#
#   [[receivers]]
#   name = "k8s-cordon"
#   kind = "exec"
#   command = ["/usr/local/lib/capwatch/k8s-cordon.sh"]
#   env = { KUBECONFIG = "/etc/capwatch/kubeconfig", CAPWATCH_RESUME = "1" }
#   [[routes]]
#   match = ["alertname=~GpuXid|GpuEccUncorrectable|GpuRowRemap"]
#   receivers = ["k8s-cordon"]
#   group_by = ["node"]
#
# stdin: Alertmanager's v4 webhook JSON; each firing alert's `node` label is cordoned
# (`kubectl cordon`: no new pods; running ones stay until someone drains it) and annotated
# capwatch.io/cordoned with the alert; on resolution only a node capwatch cordoned is
# uncordoned. capwatch's node id is taken to be the Kubernetes node name. The kubeconfig's
# user needs get/patch on nodes. Exit status: kubectl's, so a failure is retried.
set -eu
KUBECTL=${KUBECTL:-kubectl}
plan=$(python3 -c '
import json, sys
doc = json.load(sys.stdin)
for a in doc.get("alerts", []):
    labels = a.get("labels", {})
    node = labels.get("node", "")
    if node and all(c.isalnum() or c in ".-" for c in node):
        print(a.get("status", ""), node, labels.get("alertname", "alert"), sep="\t")
')
printf '%s\n' "$plan" | while IFS="$(printf '\t')" read -r state node alert; do
    [ -n "$node" ] || continue
    if [ "$state" = firing ]; then
        "$KUBECTL" cordon "$node"
        "$KUBECTL" annotate --overwrite node "$node" "capwatch.io/cordoned=$alert"
    elif [ "$state" = resolved ] && [ "${CAPWATCH_RESUME:-0}" = 1 ]; then
        if [ -n "$("$KUBECTL" get node "$node" -o 'jsonpath={.metadata.annotations.capwatch\.io/cordoned}')" ]; then
            "$KUBECTL" uncordon "$node"
            "$KUBECTL" annotate node "$node" capwatch.io/cordoned-
        fi
    fi
done
