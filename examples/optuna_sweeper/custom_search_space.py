"""A search space that depends on what was drawn: `z` is searched near `x`, within `band`, and
`w`, a key the config does not have, joins the job's config as `+w`.

    python examples/optuna_sweeper/custom_search_space.py -m

`hydra.sweeper.custom_search_space` names `configure`, which the sweeper calls for every trial
after it has suggested the `params`. It may suggest more parameters on the trial (Optuna's
define-by-run), each one an override of the trial's job, and may return a dict of overrides
that the trial gets as they are (zipnet_optuna only; hydra-optuna-sweeper ignores what it returns).
The same files run under hydra-optuna-sweeper with `zipnet_optuna` changed to `optuna` in
conf/custom_search_space.yaml.
"""

import hydra
from omegaconf import DictConfig
from optuna import Trial


def configure(cfg: DictConfig, trial: Trial) -> None:
    x = trial.params["x"]  # suggested already, from hydra.sweeper.params
    trial.suggest_float("z", x - cfg.band, x + cfg.band)
    trial.suggest_float("+w", 0.0, 1.0)  # `+`: the key is new to the config


@hydra.main(version_base="1.3", config_path="conf", config_name="custom_search_space")
def near(cfg: DictConfig) -> float:
    return float(cfg.x) ** 2 + (float(cfg.z) - 0.5) ** 2 + float(cfg.w)


if __name__ == "__main__":
    near()
