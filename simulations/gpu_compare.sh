#!/usr/bin/env bash
# The whole comparison matrix at the `full` preset (ResNet-18-GN, every arm and attack) on one
# GPU, in one go, under a time limit, writing what it measured even when it runs out of time.
#
#   simulations/gpu_compare.sh OUT_DIR [CIFAR10_JPG_TAR_GZ] [extra simulations.compare flags]
#
# Run it on a machine whose `python3` has PyTorch with CUDA and this project's requirements
# (docs/gpu.md). With the archive (the CIFAR-10 ImageFolder tree, .tar.gz) it compares on
# CIFAR-10; without it, on the embedded `shapes` data. OUT_DIR receives:
#   compare/       the report, results.csv and plots of simulations.compare;
#   compare.log    its output;
#   summary.json   the GPU, the seconds taken, the exit status, and the arms completed.
# LIMIT (seconds, default 600) bounds the comparison; PARALLEL (default 4) is how many arms'
# `flwr run`s share the GPU at once. Extra flags go to simulations.compare after the preset's,
# e.g. `--preset quick --rounds 1 --defenses none --exchanges images` for a check on a CPU.
set -uo pipefail
out=${1:?usage: gpu_compare.sh OUT_DIR [CIFAR10_JPG_TAR_GZ] [compare flags...]}
archive=${2:-}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_HOME="${FLWR_HOME:-$(mktemp -d)}"
python=${PYTHON:-python3}

data=(--dataset shapes)
if [ -n "$archive" ]; then
    cifar=$(mktemp -d)
    tar -xzf "$archive" -C "$cifar"
    data=(--dataset folder --data-dir "$cifar")
fi
started=$(date +%s)
timeout "${LIMIT:-600}" "$python" -m simulations.compare --preset full "${data[@]}" \
    --parallel "${PARALLEL:-4}" --out "$out/compare" "$@" 2>&1 | tee "$out/compare.log"
status=${PIPESTATUS[0]}
seconds=$(( $(date +%s) - started ))
"$python" - "$out" "$status" "$seconds" <<'EOF'
import json, sys
from pathlib import Path

import torch

out, status, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# Each arm's run folder has its summary.json as soon as the arm ends: counted even when the
# limit stopped the comparison before its report.
runs = sorted((out / "compare" / "runs").glob("*/summary.json"))
statuses = {p.parent.name: json.loads(p.read_text()).get("status") for p in runs}
summary = {
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "torch": torch.__version__, "exit_status": status, "seconds": seconds, "timed_out": status == 124,
    "report": (out / "compare" / "report.md").exists(),
    "arms_completed": sorted(name for name, s in statuses.items() if s == "completed"),
    "arms_not_completed": sorted(name for name, s in statuses.items() if s != "completed"),
}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
EOF
exit "$status"
