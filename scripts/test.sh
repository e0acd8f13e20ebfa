#!/usr/bin/env bash
# Create .venv if missing, install zeroshot with its test extra, run pytest. Exit 5 (no tests ran) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv || exit 1
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" || exit 1
# The search page's browser test drives Debian's chromium through Playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser test" >&2
  if ! { apt-get update -q && apt-get install -y -q chromium; } > /tmp/zeroshot-chromium-install.log 2>&1; then
    tail -n 20 /tmp/zeroshot-chromium-install.log >&2
    echo "could not install chromium (log: /tmp/zeroshot-chromium-install.log)" >&2
    exit 1
  fi
fi
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
