#!/usr/bin/env bash
# One-off GPU check for the record-on-second-call CUDA graphs (graphs on by default).
set -uo pipefail
out=$1
export PYTHONUNBUFFERED=1 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_HOME="$(mktemp -d)"
export CIFAR10_JPG=${CIFAR10_JPG:?path to the CIFAR-10 ImageFolder archive (cifar10-jpg.tar.gz)}
T0=$(date +%s); stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0))" >> "$out/gpu.txt"
stamp tests
timeout 150 python3 -m pytest -q -p no:cacheprovider -m "not slow and not deployment" \
    tests/test_cuda.py tests/test_visualmixer.py tests/test_vfe.py tests/test_st_adam.py \
    tests/test_models_data.py tests/test_training.py tests/test_dp.py tests/test_flower_apps.py \
    tests/test_attacks.py tests/test_graphs.py > "$out/pytest.log" 2>&1
status=$?; tail -3 "$out/pytest.log"; grep -h "^FAILED\|not recorded" "$out/pytest.log" | head -20
cifar=$(mktemp -d); tar -xzf "$CIFAR10_JPG" -C "$cifar"
stamp bench-rounds graphs
timeout 110 python3 -m simulations.bench_rounds --dataset folder --data-dir "$cifar" --rounds 3 --repeats 3 \
    --messages --exchanges images,activations,weights > "$out/bench-rounds.jsonl" 2>&1
grep -v messages "$out/bench-rounds.jsonl" | grep share_of_client
stamp bench-obfuscation
timeout 50 python3 -m simulations.bench_obfuscation --repeats 10 --data-dir "$cifar" > "$out/bench-obfuscation.jsonl" 2>&1
grep cuda "$out/bench-obfuscation.jsonl" | cut -c1-400
stamp bench-rounds eager
VISUALMIXER_CUDA_GRAPHS=0 timeout 100 python3 -m simulations.bench_rounds --dataset folder --data-dir "$cifar" \
    --rounds 3 --repeats 3 --messages > "$out/bench-rounds-eager.jsonl" 2>&1
grep -v messages "$out/bench-rounds-eager.jsonl" | grep share_of_client
stamp tests eager
VISUALMIXER_CUDA_GRAPHS=0 timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    -m "not slow and not deployment" > "$out/pytest-eager.log" 2>&1
s2=$?; tail -1 "$out/pytest-eager.log"
stamp done
[ "$status" -eq 0 ] && status=$s2
exit "$status"
