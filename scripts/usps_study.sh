#!/usr/bin/env bash
# The USPS study (docs/usps_study.md), end to end:   scripts/usps_study.sh ../shared/data/usps.h5
# 1. the two sweeps (resumable: rerunning continues them), 2. their reports,
# 3. the best configurations they found, 5 seeds each, 4. one report per configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
USPS=$(realpath "${1:?give the path of usps.h5 (or the LIBSVM / ESL files)}")
BIN=.venv/bin

$BIN/zipnet-train -m sweeps=usps_sgd data.path="$USPS"
$BIN/zipnet-train -m sweeps=usps_sdlm data.path="$USPS"
for study in usps_sgd usps_sdlm; do
  $BIN/zipnet-report --experiment usps_study --study $study --by paper/gap --out reports/$study > /dev/null
done

# name | overrides (the trials the sweeps ranked best, and the seed's settings for comparison)
CONFIGS=(
  "seed_settings|"
  "sgd_full|model.init=linear data.target_negative=-0.8 data.target_positive=0.8 loss.mse=mean model.table=full optim.lr=0.05971597711178781"
  "sgd_random|model.init=linear data.target_negative=-0.6 data.target_positive=0.6 loss.mse=half_sum model.table=random optim.lr=0.043393123533587284"
  "sgd_block|model.init=linear model.fan_in_bias=true data.target_negative=-0.6 data.target_positive=0.6 loss.mse=half_sum model.table=block optim.lr=0.03384532378201311"
  "sdlm_full|optim=sdlm model.init=sqrt data.target_negative=-0.8 data.target_positive=0.8 loss.mse=half_sum model.table=full optim.lr=0.0006948608894272316 optim.mu=0.04044812636651483"
  "sdlm_random|optim=sdlm model.init=linear data.target_negative=-0.8 data.target_positive=0.8 loss.mse=half_sum model.table=random optim.lr=0.0013852094372840487 optim.mu=0.1283953674493923"
  "sdlm_block|optim=sdlm model.init=linear data.target_negative=-0.8 data.target_positive=0.8 loss.mse=mean model.table=block optim.lr=0.004248167039300691 optim.mu=0.01820757590195521"
)
for entry in "${CONFIGS[@]}"; do
  name=${entry%%|*}; overrides=${entry#*|}
  # shellcheck disable=SC2086
  $BIN/zipnet-train -m hydra/launcher=population data=usps data.path="$USPS" tracking.experiment=usps_seeds_$name \
    trainer.progress=off seed=0,1,2,3,4 $overrides hydra.sweep.dir=multirun/usps_study/$name > /dev/null
  $BIN/zipnet-report --experiment usps_seeds_$name --by paper/gap --out reports/usps_seeds/$name
done
