#!/usr/bin/env bash
# Build (idempotently) the NxDI CPU environment: the real NxDI and NxD sources, run in NxDI's own CPU mode,
# with torch-xla on CPU for lowering the graphs. No Neuron SDK is needed; the compiler / runtime packages
# are replaced by test/nxdi_cpu/shims only inside the tests.
#
#   scripts/nxdi_cpu_env.sh [--venv DIR] [--nxdi-src DIR|ARCHIVE] [--nxd-src DIR|ARCHIVE]
#
# Sources: a checkout or archive of github.com/aws-neuron/neuronx-distributed-inference (tested at 4bcdc54)
# and github.com/aws-neuron/neuronx-distributed (tested at fbac349, "Release 2.29"); default: the archives in
# ../shared/vendor (or $ZAYA1_VENDOR) when present. The venv (default ~/.cache/zaya1/nxdi-cpu-venv, ~7 GB:
# PyPI's torch 2.9.0 is the CUDA build, which torch-xla 2.9.0 needs; no GPU is used) is reused when its stamp
# matches the sources and requirements, so a rerun takes seconds. Prints the venv's python on the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ZAYA1_NXDI_VENV:-$HOME/.cache/zaya1/nxdi-cpu-venv}"
nxdi_src="" nxd_src=""
vendor="${ZAYA1_VENDOR:-$here/../shared/vendor}"
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --nxdi-src) nxdi_src="$2"; shift 2 ;;
    --nxd-src) nxd_src="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "nxdi_cpu_env.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
pick() {  # the --*-src value, else the vendored archive matching $1
  local given="$1" pattern="$2"
  if [ -n "$given" ]; then echo "$given"; return; fi
  { ls "$vendor"/$pattern 2>/dev/null || true; } | head -n 1
}
nxdi_src="$(pick "$nxdi_src" 'neuronx-distributed-inference-*.tar.gz')"
nxd_src="$(pick "$nxd_src" 'neuronx-distributed-[0-9a-f]*.tar.gz')"
for src in "$nxdi_src" "$nxd_src"; do
  if [ -z "$src" ] || [ ! -e "$src" ]; then
    echo "nxdi_cpu_env.sh: error: NxDI / NxD sources not found ('$src'); none in $vendor; pass --nxdi-src and --nxd-src (a git" \
         "checkout or archive of aws-neuron/neuronx-distributed-inference and aws-neuron/neuronx-distributed)" >&2
    exit 2
  fi
done

fingerprint() {  # archive bytes; a folder (git checkout or plain unpacked source): its files' bytes
  if [ -d "$1" ]; then
    (cd "$1" && find . -path ./.git -prune -o -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z \
       | xargs -0 -r sha256sum | sha256sum)
  else sha256sum < "$1"; fi
}
source_root() {  # the folder holding setup.py / pyproject.toml: $1 itself or its one top-level folder
  local d="$1" inner
  if [ -f "$d/setup.py" ] || [ -f "$d/pyproject.toml" ]; then echo "$d"; return; fi
  inner=("$d"/*/)
  if [ ${#inner[@]} -eq 1 ] && { [ -f "${inner[0]}setup.py" ] || [ -f "${inner[0]}pyproject.toml" ]; }; then
    echo "${inner[0]%/}"; return
  fi
  echo "nxdi_cpu_env.sh: error: no setup.py or pyproject.toml in $d or in its one top-level folder;" \
       "pass the source tree of the repository (its root holds setup.py)" >&2
  return 1
}
for src in "$nxdi_src" "$nxd_src"; do  # a folder is checked before the long install, an archive once unpacked
  if [ -d "$src" ]; then source_root "$src" > /dev/null || exit 2; fi
done

requirements=(torch==2.9.0 torch-xla==2.9.0 "transformers==4.57.*" boto3 tenacity "pytest>=7" "safetensors>=0.4"
              "tokenizers>=0.19" "tqdm>=4.60")
stamp="$( { printf '%s\n' "${requirements[@]}"; fingerprint "$nxdi_src"; fingerprint "$nxd_src"; } | sha256sum | cut -c1-16)"

if [ -f "$venv/.zaya1-stamp" ] && [ "$(cat "$venv/.zaya1-stamp")" = "$stamp" ]; then
  echo "NxDI CPU environment up to date: $venv" >&2
else
  echo "building the NxDI CPU environment in $venv (first time: ~4 min, ~3.6 GB download) ..." >&2
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial"
  "$venv.partial/bin/pip" install -q "${requirements[@]}"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  for src in "$nxd_src" "$nxdi_src"; do
    if [ -d "$src" ]; then dir="$src"
    else dir="$work/$(basename "$src" .tar.gz)"; mkdir -p "$dir"; tar xzf "$src" -C "$dir"; fi
    dir="$(source_root "$dir")" || exit 2
    "$venv.partial/bin/pip" install -q --no-deps "$dir"
  done
  echo "$stamp" > "$venv.partial/.zaya1-stamp"
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # a venv's scripts name its own path: rewrite them for the final location
  grep -rlI "$venv.partial" "$venv/bin" | xargs -r sed -i "s#$venv.partial#$venv#g"
fi
# zaya1 itself, from this checkout, without dependencies (the venv keeps NxDI's transformers 4.57)
"$venv/bin/pip" install -q --no-deps -e "$here"
echo "$venv/bin/python"
