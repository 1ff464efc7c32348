"""zipnet as a cluster node gets it: a wheel installed into a fresh venv, run from an empty folder.

The fresh venv borrows the heavy dependencies (torch, mlflow, ...) from this environment's
site-packages through a .pth path line, so nothing is downloaded; a path line adds a folder
without processing the .pth files in it, so this checkout's editable install cannot leak in.
The wheel itself is installed with --no-deps.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from zipnet import resources

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "mlruns",
    "outputs",
    "multirun",
    "build",
    "dist",
    "reports",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new venv holding only the zipnet wheel built from this checkout; its python."""
    tmp = tmp_path_factory.mktemp("package")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCES)  # the build writes egg-info and build/ beside the sources
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp / "dist"),
            str(tmp / "src"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("zipnet-*.whl")

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    return python


def _env(python: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}", ZIPNET_CACHE=str(cache))
    return env


def test_the_wheel_carries_configs_studies_and_kernel(fresh_venv, tmp_path):
    probe = textwrap.dedent("""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        import zipnet
        from zipnet import resources
        from zipnet.engine import kernel
        print(zipnet.__file__)
        print(resources.checkout_root())
        print(resources.conf_dir())
        print(kernel.SOURCE)
        print(kernel.load() is not None)
        print(any(p.rstrip("/") == sys.argv[1] for p in sys.path))
        with initialize_config_dir(config_dir=str(resources.conf_dir()), version_base="1.3"):
            print(",".join(GlobalHydra.instance().config_loader().get_group_options("sweeps")))
            print(compose("config").trainer.passes)
    """)
    env = _env(fresh_venv, tmp_path / "cache")
    done = subprocess.run(
        [fresh_venv, "-c", probe, str(ROOT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    package, checkout, conf, source, kernel_built, repo_on_path, studies, passes = done.stdout.splitlines()
    venv = fresh_venv.parent.parent
    assert Path(package).is_relative_to(venv) and checkout == "None" and repo_on_path == "False"
    assert Path(conf) == Path(package).parent / "conf"
    assert Path(source).is_relative_to(venv) and Path(source).read_text() == resources.kernel_source().read_text()
    assert kernel_built == "True"  # compiled from the installed kernel.c into an empty cache
    assert list((tmp_path / "cache" / "kernel").glob("zipnet-kernel-*.so"))
    assert "unavailable" not in done.stderr
    assert studies.split(",") == sorted(p.stem for p in resources.sweeps_dir().glob("*.yaml"))
    assert int(passes) == 23
    assert sorted(p.relative_to(conf).as_posix() for p in Path(conf).rglob("*.yaml")) == sorted(
        [p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")]
        + [f"sweeps/{p.name}" for p in (ROOT / "sweeps").glob("*.yaml")]
    )


def test_zipnet_train_runs_from_an_empty_folder(fresh_venv, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    done = subprocess.run(
        ["zipnet-train", "trainer.passes=1", "data.n_train=200", "data.n_test=100", "tracking.enabled=false"],
        cwd=work,
        env=_env(fresh_venv, tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert shutil.which("zipnet-train", path=str(fresh_venv.parent)) is not None
    lines = done.stdout.splitlines()
    assert "pass 1" in lines
    assert any(line.startswith("eval: split train. loss ") for line in lines)
    assert any(line.startswith("eval: split test . loss ") for line in lines)
    (metrics,) = work.glob("outputs/*/*/metrics.json")  # Hydra's run directory under the empty folder
    assert "Primary config directory not found" not in done.stderr


def test_the_checkout_serves_sweeps_as_a_config_group():
    """In a checkout the studies stay in the top-level sweeps/ and Hydra still finds the group `sweeps`."""
    assert resources.checkout_root() == ROOT
    assert resources.conf_dir() == ROOT / "conf" and resources.sweeps_dir() == ROOT / "sweeps"
    with initialize_config_dir(config_dir=str(resources.conf_dir()), version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options("sweeps")
    assert options == sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")) and options


def test_a_folder_group_reads_package_headers(tmp_path):
    """The config source behind the checkout's `sweeps` group: a folder as one group, `# @package` honoured."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        f"lr: 0.1\npasses: 23\nhydra:\n  searchpath:\n    - zipnet-group://{tmp_path / 'sweeps'}\n"
    )
    (tmp_path / "sweeps" / "quick.yaml").write_text(  # as a study selects its sweeper
        "# @package _global_\n# a study\ndefaults:\n  - override /hydra/job_logging: disabled\npasses: 2\n"
    )
    (tmp_path / "sweeps" / "nested.yaml").write_text("study: nested\n")
    with initialize_config_dir(config_dir=str(tmp_path / "conf"), version_base="1.3"):
        quick = compose("config", overrides=["+sweeps=quick"], return_hydra_config=True)
        nested = compose("config", overrides=["+sweeps=nested"], return_hydra_config=True)
    assert (quick.lr, quick.passes, "sweeps" in quick) == (0.1, 2, False)
    assert (quick.hydra.job_logging.root.level, nested.hydra.job_logging.root.level) == ("ERROR", "INFO")
    assert (nested.passes, nested.sweeps.study) == (23, "nested")


@pytest.mark.parametrize("launcher", ["submitit_local", "submitit_slurm"])
def test_the_submitit_launchers_come_with_the_package(launcher):
    """Grids on a cluster: `hydra/launcher=submitit_slurm` (and submitit_local, its stand-in here) compose."""
    with initialize_config_dir(config_dir=str(resources.conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher.")
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher" if launcher == "submitit_local" else "SlurmLauncher")


def test_the_readme_layout_table_matches_the_tree():
    """Every path the README's layout table names exists, and every module and folder of the
    package is in it (a module moved or added without the table is a newcomer's wrong turn)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") :].split("\n## ", 1)[0]
    named = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            named.update(re.findall(r"`([^`]+)`", row.split("|")[1]))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"the layout names paths that do not exist: {missing}"
    folders = {p.rstrip("/") for p in named if p.endswith("/")}
    unlisted = []
    for path in sorted((ROOT / "zipnet").iterdir()):
        rel = path.relative_to(ROOT).as_posix()
        if path.name.startswith("_") or path.name in ("assets", "__pycache__"):
            continue
        if path.is_dir() and rel not in folders or path.is_file() and path.suffix in (".py", ".c") and rel not in named:
            unlisted.append(rel)
    assert not unlisted, f"the layout leaves out: {unlisted}"
