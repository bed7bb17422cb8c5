#!/usr/bin/env bash
# Build (idempotently) the NxDI CPU environment: the real NxDI and NxD sources, run in NxDI's own CPU mode,
# with torch-xla on CPU for lowering the graphs. No Neuron SDK is needed; the compiler / runtime packages
# are replaced by test/nxdi_cpu/shims only inside the tests.
#
#   scripts/nxdi_cpu_env.sh [--check] [--venv DIR] [--nxdi-src DIR|ARCHIVE] [--nxd-src DIR|ARCHIVE]
#
# Sources: a checkout or archive of github.com/aws-neuron/neuronx-distributed-inference (tested at 4bcdc54)
# and github.com/aws-neuron/neuronx-distributed (tested at fbac349, "Release 2.29"); default: the archives in
# ../shared/vendor (or $ZAYA1_VENDOR) when present. The venv (default ~/.cache/zaya1/nxdi-cpu-venv, ~7 GB:
# PyPI's torch 2.9.0 is the CUDA build, which torch-xla 2.9.0 needs; no GPU is used) is reused when its stamp
# matches the sources and requirements, so a rerun takes seconds. Prints the venv's python on the last line.
# --check: resolve the sources as a build would (archives unpacked, the folder holding setup.py found), print
# where pip would be pointed, the stamp and whether the venv matches it; install nothing (CI runs it first).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ZAYA1_NXDI_VENV:-$HOME/.cache/zaya1/nxdi-cpu-venv}"
nxdi_src="" nxd_src="" check=0
vendor="${ZAYA1_VENDOR:-$here/../shared/vendor}"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1; shift ;;
    --venv) venv="$2"; shift 2 ;;
    --nxdi-src) nxdi_src="$2"; shift 2 ;;
    --nxd-src) nxd_src="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "nxdi_cpu_env.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
error() { echo "nxdi_cpu_env.sh: error: $*" >&2; }
pick() {  # the --*-src value (which must exist), else the vendored archive of repository $3 matching $4
  local given="$1" flag="$2" repo="$3" pattern="$4" found
  if [ -n "$given" ]; then
    [ -e "$given" ] || { error "$flag $given does not exist; pass a source folder or .tar.gz archive of" \
                               "aws-neuron/$repo"; return 1; }
    echo "$given"; return
  fi
  found="$( { ls "$vendor"/$pattern 2>/dev/null || true; } | head -n 1)"
  [ -n "$found" ] || { error "no $pattern in $vendor; pass $flag (a source folder or .tar.gz archive of" \
                              "aws-neuron/$repo) or set ZAYA1_VENDOR"; return 1; }
  echo "$found"
}
nxdi_src="$(pick "$nxdi_src" --nxdi-src neuronx-distributed-inference 'neuronx-distributed-inference-*.tar.gz')" \
  || exit 2
nxd_src="$(pick "$nxd_src" --nxd-src neuronx-distributed 'neuronx-distributed-[0-9a-f]*.tar.gz')" || exit 2

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
  error "no setup.py or pyproject.toml in $2 or in its one top-level folder; pass the source tree of the" \
        "repository (its root holds setup.py)"
  return 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
resolve() {  # the folder pip installs for source $1 (a folder, or an archive unpacked into $work/$2)
  local src="$1" dir="$1"
  if [ ! -d "$src" ]; then
    dir="$work/$2"; mkdir -p "$dir"
    tar xzf "$src" -C "$dir" 2>/dev/null || { error "$src is not a readable .tar.gz archive; pass a source" \
                                                    "folder or a git archive of the repository"; return 1; }
  fi
  source_root "$dir" "$src"
}
# both sources are resolved before anything is installed: a wrong one fails in seconds, not after the download
nxdi_dir="$(resolve "$nxdi_src" nxdi)" || exit 2
nxd_dir="$(resolve "$nxd_src" nxd)" || exit 2

# torchvision and pillow: NxDI's accuracy utilities (check_accuracy_logits_v2) import its mllama / pixtral models
requirements=(torch==2.9.0 torch-xla==2.9.0 torchvision==0.24.0 pillow "transformers==4.57.*" boto3 tenacity
              "pytest>=7" "safetensors>=0.4" "tokenizers>=0.19" "tqdm>=4.60")
stamp="$( { printf '%s\n' "${requirements[@]}"; fingerprint "$nxdi_src"; fingerprint "$nxd_src"; } | sha256sum | cut -c1-16)"
current="$(cat "$venv/.zaya1-stamp" 2>/dev/null || true)"

if [ "$check" = 1 ]; then
  echo "nxdi: ${nxdi_dir/#"$work"\/nxdi/<$nxdi_src unpacked>}"  # the folder pip is given, holding setup.py
  echo "nxd: ${nxd_dir/#"$work"\/nxd/<$nxd_src unpacked>}"
  echo "stamp: $stamp"
  if [ "$current" = "$stamp" ]; then echo "venv: $venv up to date"
  elif [ -n "$current" ]; then echo "venv: $venv is stale (stamp $current): the next run rebuilds it"
  else echo "venv: $venv not built: the next run builds it"; fi
  exit 0
fi

if [ "$current" = "$stamp" ]; then
  echo "NxDI CPU environment up to date: $venv" >&2
else
  echo "building the NxDI CPU environment in $venv (first time: ~4 min, ~3.6 GB download) ..." >&2
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial"
  "$venv.partial/bin/pip" install -q "${requirements[@]}"
  for dir in "$nxd_dir" "$nxdi_dir"; do
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
