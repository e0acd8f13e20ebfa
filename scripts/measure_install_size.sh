#!/usr/bin/env bash
# Install sizes of zeroshot[runtime] and zeroshot[full], each in a fresh venv (du -sm), with the versions in
# constraints.txt; in the runtime venv also check that torch is absent and that an exported folder classifies.
#   scripts/measure_install_size.sh EXPORTED_FOLDER IMAGE [runtime|full|both]
# (make the folder with `zeroshot export default --card cifar10 --output DIR`). The venvs are removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
exported=$(realpath "$1")
image=$(realpath "$2")
which=${3:-both}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "# $(date -u +%F), $(python3.11 --version), $(uname -m), constraints.txt"
for extra in runtime full; do
  [ "$which" = both ] || [ "$which" = "$extra" ] || continue
  python3.11 -m venv "$work/$extra"
  start=$(date +%s)
  "$work/$extra/bin/pip" install --quiet --disable-pip-version-check ".[$extra]" -c constraints.txt
  echo "zeroshot[$extra]: $(du -sm "$work/$extra" | cut -f1) MB, installed in $(( $(date +%s) - start )) s"
  echo "  largest: $(du -sm "$work/$extra"/lib/python3.11/site-packages/* | sort -rn | head -4 \
    | awk '{n=split($2, p, "/"); printf "%s %s MB, ", p[n], $1}')"
  if [ "$extra" = runtime ]; then
    if "$work/runtime/bin/python" -c "import torch" 2>/dev/null; then
      echo "  torch is importable in the runtime venv: the extra pulled it in" >&2
      exit 1
    fi
    (cd "$work" && "$work/runtime/bin/zeroshot" classify --model "$exported" "$image" --top-k 1) \
      | sed 's/^/  classify: /'
  fi
  rm -rf "${work:?}/$extra"
done
