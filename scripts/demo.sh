#!/usr/bin/env bash
# The main job: run the whole capwatch system on this machine (no root needed).
# Creates .venv on first use. Options go to scripts/demo.py (--nodes, --seconds, ...).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" "$root/scripts/demo.py" "$@"
