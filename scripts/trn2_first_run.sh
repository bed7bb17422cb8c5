#!/usr/bin/env bash
# The first trn2 session in one command: environment facts, a compile of every configuration of the integration
# suite (time, NCC_ codes), the suite, its performance JSON and one report file (OUT/first-run-report.md).
# Run it inside the DLAMI's NxDI virtualenv with zaya1 installed (docs/trainium.md); all options: --help.
#
#   scripts/trn2_first_run.sh --checkpoint /ckpt/ZAYA1-8B --out ~/trn2-first-run       # everything (hours)
#   scripts/trn2_first_run.sh --config golden-gqa-float32                               # one configuration
#
# Full 40-layer compiles take hours each on a trn2.3xlarge; compiled artifacts are reused on the next run.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export NEURON_PLATFORM_TARGET_OVERRIDE="${NEURON_PLATFORM_TARGET_OVERRIDE:-trn2}"
export NEURON_LOGICAL_NC_CONFIG="${NEURON_LOGICAL_NC_CONFIG:-2}"  # trn2.3xlarge: 4 logical cores, tp 4
exec python "$here/test/integration/first_run.py" "$@"
