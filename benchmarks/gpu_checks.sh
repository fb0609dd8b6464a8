#!/usr/bin/env bash
# Every GPU check and benchmark the issues name, in one go, for a lent GPU machine (nothing here needs one).
# Each part has its own time limit so that a slow part does not starve the rest; logs go to $OUT (or ./gpu-out).
#   bash benchmarks/gpu_checks.sh            # with torch (CUDA), moshi==0.2.13 and sphn importable
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export NO_TORCH_COMPILE=1
part() { local limit=$1 name=$2; shift 2; echo "=== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -25; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
part 150 gpu-tests python -m pytest -q -x -p no:cacheprovider tests/lm/test_generator_gpu.py tests/codec/test_mimi_gpu.py tests/inference/test_engine_gpu.py
part 170 lm-step-b1 python benchmarks/lm_step.py --device cuda --config moshiko --dtype bfloat16 --batch-size 1 --threads 16 --runs 2 --steps 40
part 210 engine-step python benchmarks/engine_step.py --device cuda --config moshiko --dtype bfloat16 --threads 16 --steps 60 --sessions 1 16 32 48 64 80
part 150 engine-idle-slots python benchmarks/engine_step.py --device cuda --config moshiko --dtype bfloat16 --threads 16 --steps 60 --sessions 4 --slots 4 64 --repeats 3
part 300 server-io-workers python benchmarks/server_load.py --device cuda --config moshiko --dtype bfloat16 --threads 16 --clients 32 48 64 --realtime --seconds 8 --client-processes 8 --io-workers 4
part 240 prepare-throughput python benchmarks/prepare_throughput.py --device cuda --threads 16 --conversations 128 --batch-sizes 1 16 64 --runs 2
part 90 stt-gpu-tests python -m pytest -q -x -p no:cacheprovider tests/inference/test_stt_gpu.py
part 300 stt-streams python benchmarks/stt_streams.py --device cuda --config stt-1b --dtype bfloat16 --threads 16 --batch-sizes 64 256 400 512 --runs 2 --steps 25 --engine
