"""The wheel's one custom step: the shipped recipes, launch configs and sbatch scripts travel inside the
package (trainwright/shipped/), so an installed trainwright has them without a checkout
(trainwright/recipe/shipped.py reads them)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("recipes", "accelerate_configs", "slurm")


class BuildWithShippedFiles(build_py):
    """build_py, then a copy of the top-level folders users copy from into trainwright/shipped/."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "trainwright" / "shipped"
        for folder in SHIPPED:
            if Path(folder).is_dir():
                shutil.copytree(folder, target / folder, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithShippedFiles})
