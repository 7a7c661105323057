#!/usr/bin/env bash
# Create (or refresh) the project's virtualenv in .venv with capwatch and its dev tools.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (a stamp skips pip when
# pyproject.toml has not changed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

pick_python() {
  for py in "${CAPWATCH_PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "capwatch needs Python >= 3.11 (apt-get install python3 python3-venv, or set CAPWATCH_PYTHON)" >&2
  return 1
}

if [ ! -x "$venv/bin/python" ]; then
  py="$(pick_python)"
  echo "==> creating virtualenv .venv with $py" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.capwatch-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  echo "==> installing capwatch and its dependencies into .venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[collector,dev]"
  touch "$stamp"
fi
# Bytecode for the repository's own modules, as pip writes it for an installed capwatch. This
# checkout is installed editable, and where PYTHONDONTWRITEBYTECODE is set Python writes none,
# so every process compiled each module it imported: ~0.2 s of CPU of each collector start
# (instructions to Collector() built: 2.59 G without, 1.63 G with), more than any import.
# Current files are skipped (~0.3 s); one that no longer compiles is the tests' to report.
"$venv/bin/python" -m compileall -q "$root/agent" "$root/collector" "$root/shared" >/dev/null || true
