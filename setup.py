"""Build step of the distribution: the map viewer's MapLibre bundle goes into every wheel.

``/viewer`` needs ``broker/static/viewer/vendor/`` (MapLibre GL JS, from npm, by
``scripts/build-viewer.sh``), which is not in the repository. Building a wheel or an sdist
from a clone runs that script when the folder is missing, so an installed ``renkei``
serves the map; without npm the build stops and says why. An sdist carries the built
files, so installing from it needs no npm. Editable installs use the clone as it is
(``make viewer`` builds the viewer there).

Everything else about the distribution is in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "broker" / "static" / "viewer" / "vendor" / "maplibre-gl.js"
SCRIPT = HERE / "scripts" / "build-viewer.sh"


class ViewerBuildError(SystemExit):
    pass


def build_viewer() -> None:
    if BUNDLE.is_file():
        return
    if shutil.which("npm") is None or not SCRIPT.is_file():
        raise ViewerBuildError(
            "\nrenkei: the map viewer (broker/static/viewer/vendor/) is not built and npm is "
            "not available, so a wheel would serve /viewer as 'not built'.\n"
            "Install Node.js and npm (Debian: apt-get install npm) and build again, or run "
            "scripts/build-viewer.sh where npm is available first.\n"
            "renkei: 地図ビューアー (broker/static/viewer/vendor/) がビルドされておらず、npm も"
            "ないため、wheel を作れません。npm を入れて (Debian: apt-get install npm) "
            "もう一度ビルドしてください。\n"
        )
    print("renkei: building the map viewer with npm (scripts/build-viewer.sh)")
    subprocess.run(["bash", str(SCRIPT)], check=True)
    if not BUNDLE.is_file():
        raise ViewerBuildError(f"renkei: scripts/build-viewer.sh did not write {BUNDLE}")


class BuildPyWithViewer(build_py):
    def run(self) -> None:
        if not self.editable_mode:
            build_viewer()
        super().run()


class SdistWithViewer(sdist):
    def run(self) -> None:
        build_viewer()
        super().run()


setup(cmdclass={"build_py": BuildPyWithViewer, "sdist": SdistWithViewer})
