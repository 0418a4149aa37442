"""The unrelated ``shekel`` on PyPI: what ``import shekel`` says when that project's files are where they
would break or shadow this one (``shekel._namesake``), and whose metadata ``shekel._versions`` reads.

Each case runs a child interpreter over a copy of this package laid out in temporary site directories, with
files named as the other project's wheels name them (0.2.0 to 1.2.0).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import shekel
from shekel._namesake import THEIR_FILES
from shekel._versions import SUMMARY, our_distribution

PACKAGE = Path(shekel.__file__).resolve().parent
THEIR_METADATA = """\
Metadata-Version: 2.4
Name: shekel
Version: 1.2.0
Summary: LLM budget enforcement and cost tracking.
Project-URL: Homepage, https://github.com/arieradle/shekel
Requires-Dist: huggingface-hub>=0.20.0; extra == 'huggingface'
Provides-Extra: huggingface
"""


def this_package_in(site: Path) -> Path:
    copy = site / "shekel"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def their_package_in(site: Path) -> Path:
    theirs = site / "shekel"
    theirs.mkdir(parents=True)
    (theirs / "__init__.py").write_text("raise AssertionError('the other shekel was imported')\n")
    for name in THEIR_FILES:
        (theirs / name).write_text("")
    (site / "shekel-1.2.0.dist-info").mkdir()
    (site / "shekel-1.2.0.dist-info" / "METADATA").write_text(THEIR_METADATA)
    return theirs


def run(code: str, cwd: Path, *path: Path, warnings: str = "error") -> subprocess.CompletedProcess[str]:
    # Not from the checkout: sys.path starts with the current directory, and a checkout holds shekel.egg-info.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run(
        [sys.executable, "-W", warnings, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=cwd,
    )


def test_a_clean_install_says_nothing(tmp_path: Path) -> None:
    done = run("import shekel", tmp_path)
    assert done.returncode == 0 and not done.stderr


def test_a_directory_mixed_with_the_other_projects_files_is_refused_before_anything_shared_runs(
    tmp_path: Path,
) -> None:
    mixed = this_package_in(tmp_path)
    for name in THEIR_FILES:
        (mixed / name).write_text("")
    # The two share _budget.py (and __init__.py, _context.py, _pricing.py): here the other one's won.
    (mixed / "_budget.py").write_text("raise SystemExit('the other _budget.py ran')\n")
    done = run("import shekel", tmp_path, tmp_path)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ImportError: shekel: {mixed} holds the files of two different projects")
    assert "this shekel (hard spending limits for LLM calls, https://github.com/shekel-dev/shekel)" in last
    assert "an unrelated project also called shekel (published on PyPI as 'shekel')" in last
    assert all(name in last for name in THEIR_FILES)
    assert "-m pip uninstall shekel` until pip says shekel is not installed" in last
    assert 'pip install ".[huggingface]"' in last


def test_the_other_project_later_on_the_path_is_named_in_a_warning(tmp_path: Path) -> None:
    ours = this_package_in(tmp_path / "ours")
    theirs = their_package_in(tmp_path / "theirs")
    site = (tmp_path / "ours", tmp_path / "theirs")
    done = run("import shekel; print(shekel.__file__)", tmp_path, *site, warnings="always")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ours / "__init__.py")
    assert "RuntimeWarning: shekel: an unrelated project also called shekel" in done.stderr
    assert f"1.2.0 is installed at {theirs}" in done.stderr
    assert f"from {ours}, which comes first on sys.path" in done.stderr
    assert f"delete {theirs} and {tmp_path / 'theirs' / 'shekel-1.2.0.dist-info'}" in done.stderr
    # Turned into an error, it stops the import: nobody runs a cap from an ambiguous environment unawares.
    assert run("import shekel", tmp_path, *site).returncode == 1


def test_the_other_projects_metadata_found_first_is_not_read_as_this_ones(tmp_path: Path) -> None:
    their_package_in(tmp_path / "theirs")
    shutil.rmtree(tmp_path / "theirs" / "shekel")  # a leftover dist-info, its package gone
    code = (
        "from importlib import metadata\n"
        "from shekel import _versions\n"
        "print(metadata.version('shekel'), _versions.supported_range('huggingface_hub'))\n"
    )
    done = run(code, tmp_path, tmp_path / "theirs")
    assert done.returncode == 0, done.stderr
    first, ours = done.stdout.split()
    assert first == "1.2.0"  # what importlib.metadata finds first by that name
    assert set(ours.split(",")) == {">=1.0", "<2"}  # this project's extra, not the other's >=0.20.0


def test_this_projects_metadata_is_recognised() -> None:
    found = our_distribution()
    assert found is not None and found.metadata["Summary"].startswith(SUMMARY)
