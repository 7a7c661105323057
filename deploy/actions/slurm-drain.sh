#!/bin/sh
# capwatch exec receiver: drain the nodes of a notification in Slurm (resume them when it
# resolves, with CAPWATCH_RESUME=1).
#
#   [[receivers]]
#   name = "slurm-drain"
#   kind = "exec"
#   command = ["/usr/local/lib/capwatch/slurm-drain.sh"]
#   env = { CAPWATCH_RESUME = "1" }          # optional: resume when the alert resolves
#   [[routes]]
#   match = ["alertname=~GpuXid|GpuEccUncorrectable|GpuRowRemap"]
#   receivers = ["slurm-drain"]
#   group_by = ["node"]
#
# stdin: Alertmanager's v4 webhook JSON; each firing alert's `node` label is drained with
#   scontrol update nodename=<node> state=drain reason="capwatch: <alertname> <summary>"
# (capwatch's node id is taken to be the Slurm NodeName: the short hostname by default).
# A node is resumed on resolution only when capwatch drained it (its reason starts with
# "capwatch:"), so a drain an operator set by hand is never lifted. Exit status: scontrol's,
# so a failure is retried by capwatch's outbox. Needs python3 and scontrol on PATH
# (SCONTROL overrides the latter) and a user Slurm lets update nodes (SlurmUser or root).
set -eu
SCONTROL=${SCONTROL:-scontrol}
plan=$(python3 -c '
import json, sys
doc = json.load(sys.stdin)
for a in doc.get("alerts", []):
    labels = a.get("labels", {})
    node = labels.get("node", "")
    if not node or not all(c.isalnum() or c in "._-" for c in node):
        continue
    what = " ".join(x for x in (labels.get("alertname", ""), a.get("annotations", {}).get("summary", "")) if x)
    # A summary holds text a node chose (a user name): one line, printable, or a newline and
    # tabs in it would be read below as a line of their own, draining another node.
    what = " ".join("".join(c if c.isprintable() else " " for c in what).split())
    reason = ("capwatch: " + what).replace("\"", "\x27")[:200]
    print(a.get("status", ""), node, reason, sep="\t")
')
status=0
printf '%s\n' "$plan" | while IFS="$(printf '\t')" read -r state node reason; do
    [ -n "$node" ] || continue
    if [ "$state" = firing ]; then
        "$SCONTROL" update nodename="$node" state=drain reason="$reason" || status=$?
        echo "drained $node: $reason"
    elif [ "$state" = resolved ] && [ "${CAPWATCH_RESUME:-0}" = 1 ]; then
        current=$("$SCONTROL" show node "$node" | sed -n 's/^ *Reason=\(capwatch:[^[]*\).*/\1/p')
        if [ -n "$current" ]; then
            "$SCONTROL" update nodename="$node" state=resume || status=$?
            echo "resumed $node"
        fi
    fi
    [ "$status" = 0 ] || exit "$status"
done
