"""Where zipnet's own files are: the Hydra configs, the study definitions and the kernel source.

In a checkout (an editable install) they stay where the repository keeps them: `conf/` and
`sweeps/` at the top, `zipnet/engine/kernel.c` beside the engine's code. A wheel or `pip install .`
carries them inside the package (setup.py's build step): `zipnet/conf/`, with the studies as the
config group `zipnet/conf/sweeps/`, and `zipnet/engine/kernel.c`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository this package runs from, or None when it is installed (a wheel)."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "conf" / "config.yaml").is_file():
        return root
    return None


def conf_dir() -> Path:
    """The primary Hydra config directory (holds config.yaml and the config groups)."""
    root = checkout_root()
    conf = root / "conf" if root else PACKAGE / "conf"
    if not (conf / "config.yaml").is_file():
        raise FileNotFoundError(f"zipnet's configs are missing: no config.yaml in {conf} (reinstall zipnet)")
    return conf


def sweeps_dir() -> Path:
    """The study definitions, the files of the config group `sweeps` (selected as `sweeps=NAME`)."""
    root = checkout_root()
    return root / "sweeps" if root else conf_dir() / "sweeps"


def kernel_source() -> Path:
    """kernel.c, the CPU kernel's source, compiled on first use."""
    return PACKAGE / "engine" / "kernel.c"
