# Sourced by the scripts beside it: makes .venv (once) and installs dropr, extensions built
# (a build without them fails here), with the extras named in $extras. Reinstalls when the
# build inputs change: the Cython sources and declarations, and the pure-Python front that
# setup.py compiles as it is (the generated .c files do not count).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${DROPR_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "dropr: creating $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
fi
# The test extras hold all the others: a .venv set up for the tests serves the demo as it is.
if [ -f "$venv/.dropr-test" ]; then extras=test; fi
stamp="$venv/.dropr-$extras"
if [ ! -f "$stamp" ] || [ -n "$(find "$root/pyproject.toml" "$root/setup.py" "$root"/ext/*.pyx "$root"/ext/*.pxd "$root"/dropr/*.pxd "$root/dropr/_putter_py.py" -newer "$stamp" 2>/dev/null | head -n 1)" ]; then
  echo "dropr: installing dropr[$extras] and building its extensions" >&2
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --upgrade pip &&
         DROPR_REQUIRE_EXTENSIONS=1 "$venv/bin/python" -m pip install --editable "$root[$extras]"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "dropr: installing failed; the whole log is in $log" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
