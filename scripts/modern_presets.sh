#!/usr/bin/env bash
# The seed's modern recipe, preset by preset, 5 seeds each, on the embedded digits and on USPS
# (docs/usps_study.md):   scripts/modern_presets.sh ../shared/data/usps.h5
set -euo pipefail
cd "$(dirname "$0")/.."
USPS=$(realpath "${1:?give the path of usps.h5 (or the LIBSVM / ESL files)}")
BIN=.venv/bin
PRESETS=modern/1_cross_entropy,modern/2_adamw,modern/3_shifts,modern/4_relu_dropout

for data in embedded usps; do
  extra=(); [ $data = usps ] && extra=(data.path="$USPS")
  $BIN/zipnet-train -m hydra/launcher=population data=$data "${extra[@]}" experiment=$PRESETS seed=0,1,2,3,4 \
    tracking.experiment=modern_$data trainer.progress=off hydra.sweep.dir=multirun/modern/$data > /dev/null
  $BIN/zipnet-report --experiment modern_$data --out reports/modern_$data > /dev/null
  for passes in 23 46 60 80; do  # one preset each
    $BIN/zipnet-report --experiment modern_$data --param trainer.passes=$passes --out reports/modern_$data/passes_$passes
  done
done
