"""zipnet-train: train the 1989 net from a Hydra config and print a line per pass.

    zipnet-train
    zipnet-train model.init=linear loss.mse=half_sum optim.lr=0.01 trainer.passes=5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from zipnet import config as checks
from zipnet.data import load_digits
from zipnet.engine import RunResult, train
from zipnet.errors import ConfigError, DataError
from zipnet.progress import PassBar

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def run(cfg: DictConfig, log=print, out_dir: Path | None = None, on_pass=None) -> RunResult:
    """Train the one configuration `cfg` describes: a population of one.

    `on_pass(pass_number, [result])` runs after each pass (trackers log there; a pruner
    returns {0} to stop the run).
    """
    member = checks.member(cfg)
    opts = checks.trainer(cfg)
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    if opts["device"].startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"{opts['device']!r} asked for, but no CUDA device is available; use cpu")
    digits = load_digits(cfg.data)
    log(f"data: {cfg.data.source}, {len(digits.train_y)} train / {len(digits.test_y)} test, fingerprint {digits.fingerprint[:12]}")
    bar = PassBar(opts["passes"], enabled={"auto": None, "on": True, "off": False}[opts["progress"]])
    (result,) = train([member], digits, passes=opts["passes"], device=opts["device"], log=log, on_pass=on_pass, progress=bar)
    if result.status == "diverged":
        bar.close()
        log(f"diverged at pass {result.diverged_at_pass}: stopped; lower optim.lr or change the init")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        summary = {"status": result.status, "diverged_at_pass": result.diverged_at_pass, "history": result.history,
                   "data_fingerprint": digits.fingerprint}
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run(cfg, out_dir=Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, DataError) as err:
        print(f"zipnet-train: error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
