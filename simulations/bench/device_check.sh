#!/usr/bin/env bash
# The GPU check: the CUDA tests, then the benchmarks with a CUDA device, in one go.
#
#   simulations/bench/device_check.sh OUT_DIR [CIFAR10_JPG_TAR_GZ]
#
# Run it on a machine whose `python3` has PyTorch with CUDA and this project's other
# requirements (docs/gpu.md says how it was run). It runs, each under its own time limit so a
# hang cannot eat the rest:
#   1. the in-process tests (tests/test_cuda.py and every test that follows run-config
#      device=auto onto the GPU; no Ray, no SuperLink), then tests/test_cuda.py again with
#      VisualMixer's CUDA graphs switched off (VISUALMIXER_CUDA_GRAPHS=0);
#   2. bench.obfuscation (CPU and CUDA rows, CUDA graphs interleaved with eager), on CIFAR-10
#      test images when the archive is given;
#   3. bench.step with --device cuda;
#   4. bench.profile_obfuscation on CUDA, eager and with CUDA graphs (and the CPU, for comparison);
#   5. bench.retries on CUDA: how often the closed loop retries and what a retry costs there;
#   6. bench.rounds on CIFAR-10 (the archive is needed), every node and the server on CUDA,
#      with CUDA graphs off and then on (the default), every message's seconds and retries
#      included.
# Logs and JSON lines land in OUT_DIR; the exit status is the tests'. With QUICK=1 in the
# environment (about 6 minutes instead of 10) steps 3 and 4 and the eager half of step 6
# are left out, and step 6 repeats each arm twice instead of three times.
set -uo pipefail
out=${1:?usage: device_check.sh OUT_DIR [CIFAR10_JPG_TAR_GZ]}
archive=${2:-}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_HOME="$(mktemp -d)"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
    'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$out/gpu.txt"

[ -n "$archive" ] && export CIFAR10_JPG="$archive"  # the CIFAR-10 loader test reads it
timeout 300 python3 -m pytest -q -p no:cacheprovider -m "not slow and not deployment" \
    tests/test_cuda.py tests/test_visualmixer.py tests/test_vfe.py tests/test_st_adam.py \
    tests/test_models_data.py tests/test_training.py tests/test_dp.py tests/test_flower_apps.py \
    tests/test_attacks.py tests/test_graphs.py tests/test_logging.py --junitxml "$out/junit.xml" 2>&1 | tee "$out/pytest.log"
status=${PIPESTATUS[0]}
VISUALMIXER_CUDA_GRAPHS=0 timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    -m "not slow and not deployment" --junitxml "$out/junit-eager.xml" 2>&1 | tee "$out/pytest-eager.log"
eager_status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && status=$eager_status

data=()
if [ -n "$archive" ]; then
    cifar=$(mktemp -d)
    tar -xzf "$archive" -C "$cifar"
    data=(--data-dir "$cifar")
fi
timeout 90 python3 -m simulations.bench.obfuscation --repeats 10 "${data[@]}" | tee "$out/bench-obfuscation.jsonl"
quick=${QUICK:-0}
repeats=3
[ "$quick" = 1 ] && repeats=2
[ "$quick" = 1 ] || timeout 60 python3 -m simulations.bench.step --device cuda | tee "$out/bench-step.jsonl"
profile() {
    [ "$quick" = 1 ] && return
    timeout 60 python3 -m simulations.bench.profile_obfuscation "$@" "${data[@]}" | tee -a "$out/profile.jsonl"
}
profile --device cuda --batch 256 --trace "$out/trace-cuda-256.json"
profile --device cuda --batch 1024
profile --device cuda --batch 32 --size 224
profile --device cuda --batch 256 --cuda-graphs --trace "$out/trace-cuda-graphs-256.json"
profile --device cuda --batch 1024 --cuda-graphs
profile --device cuda --batch 32 --size 224 --cuda-graphs
profile --device cpu --batch 256
timeout 60 python3 -m simulations.bench.retries --device cuda "${data[@]}" | tee "$out/bench-retries.jsonl"
if [ -n "$archive" ]; then
    [ "$quick" = 1 ] || VISUALMIXER_CUDA_GRAPHS=0 timeout 200 python3 -m simulations.bench.rounds --dataset folder \
        "${data[@]}" --rounds 3 --repeats 3 --messages | tee "$out/bench-rounds-eager.jsonl"
    timeout 200 python3 -m simulations.bench.rounds --dataset folder "${data[@]}" --rounds 3 --repeats "$repeats" \
        --messages | tee "$out/bench-rounds.jsonl"
fi
echo "tests exit status: $status"
exit "$status"
