#!/usr/bin/env bash
# Install zeroshot with its test extra into a venv (created if missing) and run pytest with the given arguments.
#   scripts/test.sh [PYTEST ARGS]           .venv, at the exact versions in constraints.txt (what CI runs)
#   scripts/test.sh --latest [PYTEST ARGS]  .venv-latest, at the newest versions pyproject.toml allows, so a break
#                                           in a new release shows up as a named test failure
#   scripts/test.sh --freeze                write .venv-latest's versions into constraints.txt (after --latest passed)
# Exit 5 from pytest (no tests ran) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv
install=(-e ".[test]" -c constraints.txt)
case "${1:-}" in
  --latest)
    shift
    venv=.venv-latest
    install=(-e ".[test]" --upgrade --upgrade-strategy eager)
    ;;
  --freeze)
    [ -x .venv-latest/bin/python ] || { echo "no .venv-latest: run scripts/test.sh --latest first" >&2; exit 1; }
    # Keep the header comments, replace the versions (pip itself is a tool, not a dependency).
    { grep '^#' constraints.txt; .venv-latest/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } \
      > constraints.txt.new && mv constraints.txt.new constraints.txt
    exit $?
    ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  python3.11 -m venv "$venv" || exit 1
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${install[@]}" || exit 1
# The versions under test, on one line, so a log says what passed or broke.
"$venv/bin/python" - torch torchvision open_clip_torch timm transformers faiss-cpu scikit-learn scipy numpy ray <<'EOF'
import importlib.metadata as md, sys

def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"

print("versions:", ", ".join(f"{name} {version(name)}" for name in sys.argv[1:]), flush=True)
EOF
# The search page's browser test drives Debian's chromium through Playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser test" >&2
  if ! { apt-get update -q && apt-get install -y -q chromium; } > /tmp/zeroshot-chromium-install.log 2>&1; then
    tail -n 20 /tmp/zeroshot-chromium-install.log >&2
    echo "could not install chromium (log: /tmp/zeroshot-chromium-install.log)" >&2
    exit 1
  fi
fi
"$venv/bin/python" -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
