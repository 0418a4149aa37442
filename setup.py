"""Ships ``shekel_autorun.pth`` beside the package, in site-packages (everything else is in pyproject.toml).

The file runs one line at every Python start-up: with ``SHEKEL_RUN`` set (by ``shekel run``), it enters
the run's budget, so that child processes share the run's cap; without it, it does nothing
(``shekel_core/_autorun.py``). A wheel's top-level files land in site-packages: ``build_py`` puts the file
at the top of the build directory. An editable install's wheel is assembled elsewhere: there ``build_py``
writes it into that wheel's directory (the ``install`` command's ``install_lib``).
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "shekel_autorun.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.copy_file(os.path.join(HERE, PTH), os.path.join(target, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH))
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
