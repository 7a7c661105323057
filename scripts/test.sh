#!/usr/bin/env bash
# Run capwatch's tests (creates .venv on first use). Extra arguments go to pytest.
# The integration tests need Mosquitto: when it is missing, this script installs it if it
# may (root, or passwordless sudo); otherwise those tests are skipped and the run ends with a
# loud line saying how many and how to fix it (under CI=true they fail instead).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The broker-security tests also need mosquitto_passwd (Debian: same package).
have_mosquitto() {
  { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } &&
    command -v mosquitto_passwd >/dev/null 2>&1
}
if ! have_mosquitto; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo="none"; fi
  fi
  if [ "$sudo" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing mosquitto (integration tests need it)" >&2
    $sudo apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto >/dev/null ||
      echo "!!! could not install mosquitto; integration tests will be skipped" >&2
  else
    echo "!!! mosquitto or mosquitto_passwd is missing and cannot be installed without root:" \
         "integration tests will be skipped (fix: sudo apt-get install -y mosquitto)" >&2
  fi
fi

"$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
