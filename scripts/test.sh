#!/usr/bin/env bash
# Run capwatch's tests (creates .venv on first use). Extra arguments go to pytest.
# The integration tests need Mosquitto, NATS, Alertmanager, Prometheus and Slurm: when one is missing,
# this script installs it if it may (root, or passwordless sudo); otherwise those tests are
# skipped, loudly (under CI=true they fail instead).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The broker-security tests also need mosquitto_passwd (Debian: same package); the
# Alertmanager push tests prometheus-alertmanager, the metrics tests prometheus (promtool),
# the broker conformance tests nats-server.
missing=()
{ { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } &&
  command -v mosquitto_passwd >/dev/null 2>&1; } || missing+=(mosquitto)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
{ command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; } || missing+=(nats-server)
# snmpsimd: a real SNMP agent replaying recorded rack-PDU walks (tests/snmpsim.py).
command -v snmpsimd >/dev/null 2>&1 || missing+=(snmpsim)
# PostgreSQL (initdb, pg_ctl): the store's second backend; Debian keeps them off PATH.
{ command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || missing+=(postgresql)

# Slurm (munged, slurmctld, slurmd on free ports: tests/slurm.py): job attribution and the
# exec receiver's drain action are tested against a real one.
{ command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ]; } || missing+=(munge)
{ command -v slurmd >/dev/null 2>&1 || [ -x /usr/sbin/slurmd ]; } || missing+=(slurm-wlm)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
  fi
  if [ "$sudo" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} (integration tests need them)" >&2
    $sudo apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null ||
      echo "!!! could not install ${missing[*]}; the tests that need them will be skipped" >&2
  else
    echo "!!! ${missing[*]} missing and cannot be installed without root: the tests that" \
         "need them will be skipped (fix: sudo apt-get install -y ${missing[*]})" >&2
  fi
fi

"$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
