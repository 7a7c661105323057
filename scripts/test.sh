#!/usr/bin/env bash
# Run capwatch's tests (creates .venv on first use). Extra arguments go to pytest.
# Integration tests need the mosquitto binary (apt-get install mosquitto); without it they
# are skipped with a reason, except under CI=true where they fail.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/python -m pytest "$@"
