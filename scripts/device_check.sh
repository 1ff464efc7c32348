#!/usr/bin/env bash
# The GPU path, measured in one go (a few minutes on one GPU):
#   scripts/device_check.sh                   # with .venv/bin/python
#   PYTHON=/path/to/python scripts/device_check.sh
# 1. the CUDA tests (they skip without a GPU elsewhere): a population on CUDA against the CPU, and a
#    member trained on CUDA against its CUDA single run;
# 2. bench_population with device cuda (torch ops) at K from 1 to 4096, the reference loop timed
#    on the host CPU in the same run;
# 3. a 1,000-trial sweep on the GPU: the zipnet_optuna sweeper asks all 1,000 at once and the
#    population launcher trains them in one population per data seed (untracked, sqlite storage).
# It needs a torch build with CUDA (the project pins the CPU build: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "$(command -v "${PYTHON:-.venv/bin/python}")")  # absolute: the sweep runs in a temp folder

"$PY" - <<'PYEOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"device_check: this torch ({torch.__version__}) sees no CUDA device; run it where torch has CUDA")
print(f"device_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF

echo "== CUDA tests"
"$PY" -m pytest -q -rs -k cuda tests/test_engine.py

echo "== bench_population on CUDA, K = 1 .. 4096"
"$PY" benchmarks/bench_population.py --device cuda --ks 1,4,16,64,256,1024,4096 --passes 1

echo "== a 1,000-trial sweep on the GPU"
work=$(mktemp -d)
SECONDS=0
(cd "$work" && "$PY" -m zipnet.cli.train -m hydra/sweeper=zipnet_optuna hydra/launcher=population \
    hydra.sweeper.study_name=gpu1000 hydra.sweeper.n_trials=1000 hydra.sweeper.batch=1000 \
    'hydra.sweeper.pruner={name:none}' 'hydra.sweeper.sampler={name:random,seed:0}' \
    trainer.device=cuda tracking.enabled=false trainer.progress=off \
    'model.init=choice(sqrt,linear)' 'loss.mse=choice(mean,sum,half_sum)' 'targets=choice(pm1.0,pm0.8,pm0.6)' \
    'optim.lr=tag(log,interval(0.001,0.3))' 'data.seed=choice(0,1,2)' 2>&1 | grep -E "population|batch of|this worker|study '")
echo "1,000 trials x 23 passes: ${SECONDS} s wall, process start to exit"
rm -rf "$work"
