"""Packaging beyond pyproject.toml: the top-level conf/ and sweeps/ travel inside the package.

A checkout reads them where they are (zipnet/resources.py). A wheel, or `pip install .`, gets
them as zipnet/conf/, with the study definitions as its config group zipnet/conf/sweeps/.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# source folder -> its place in the package
CONFIGS = {"conf": ("zipnet", "conf"), "sweeps": ("zipnet", "conf", "sweeps")}


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's folders
            return
        for source, place in CONFIGS.items():
            for path in sorted(Path(source).rglob("*.yaml")):
                target = Path(self.build_lib, *place, path.relative_to(source))
                self.mkpath(str(target.parent))
                self.copy_file(str(path), str(target))


setup(cmdclass={"build_py": BuildWithConfigs})
