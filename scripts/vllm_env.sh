#!/usr/bin/env bash
# Build (idempotently) vLLM 0.16.0 for the NxDI CPU stage's vLLM checks (test/nxdi_cpu/test_vllm_loader.py):
# vLLM's own PyPI wheel, unmodified (the version vllm-neuron 0.5 pins), installed with --no-deps into a folder
# of its own, plus only the packages its config / model-registry modules import, pinned. The tests put the
# folder on PYTHONPATH of the NxDI CPU venv's python (torch 2.9.0, transformers 4.57: vLLM 0.16 pins torch
# 2.9.1 and transformers >=4.56,<5); nothing is installed into that venv, and vLLM's compiled CUDA kernels are
# never loaded (no GPU, no serving: vLLM's ModelConfig and model-interface inspection run).
#
#   scripts/vllm_env.sh PYTHON [--dir DIR]
#
# PYTHON: the NxDI CPU venv's python (scripts/nxdi_cpu_env.sh prints it). DIR (default
# ~/.cache/zaya1/vllm-0.16.0, ~1.3 GB; first build ~1 min, ~520 MB download) is reused while its stamp matches
# the pins and PYTHON's version, so a rerun takes a second. Prints DIR on the last line.
set -euo pipefail
python="${1:-}"
dir="${ZAYA1_VLLM_SITE:-$HOME/.cache/zaya1/vllm-0.16.0}"
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "vllm_env.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$python" ] || ! "$python" -c "import torch, transformers" 2>/dev/null; then
  echo "vllm_env.sh: error: '$python' is not a python with torch and transformers; pass the NxDI CPU venv's" \
       "python: scripts/vllm_env.sh \"\$(scripts/nxdi_cpu_env.sh | tail -n 1)\"" >&2
  exit 2
fi
# vLLM, then what `import vllm.config` and vllm.model_executor.models.registry import beyond that venv
requirements=(vllm==0.16.0 aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated_types==0.8.0
              attrs==26.1.0 cachetools==8.0.3 cbor2==6.3.0 cloudpickle==3.1.3 frozenlist==1.8.0 gguf==0.19.0
              msgspec==0.23.0 multidict==7.2.1 pillow==13.0.0 propcache==0.5.4 psutil==7.2.2 py-cpuinfo==9.0.0
              pybase64==1.5.1 pydantic==2.14.4 pydantic_core==2.50.5 pyzmq==27.3.0 typing_inspection==0.4.5
              yarl==1.25.1)
stamp="$( { printf '%s\n' "${requirements[@]}"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum \
         | cut -c1-16)"

if [ -f "$dir/.zaya1-stamp" ] && [ "$(cat "$dir/.zaya1-stamp")" = "$stamp" ]; then
  echo "vLLM 0.16.0 up to date: $dir" >&2
else
  echo "installing vLLM 0.16.0 (no dependencies) and its import requirements into $dir ..." >&2
  rm -rf "$dir.partial"
  "$python" -m pip install -q --no-deps --target "$dir.partial" "${requirements[@]}"
  echo "$stamp" > "$dir.partial/.zaya1-stamp"
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
fi
echo "$dir"
