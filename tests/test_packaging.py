"""What a package index gets: the wheel and the sdist, built from a copy of this tree with setuptools' own
backend (no isolation, no network), and their metadata.

The sdist carries the tests and what they read, so this test also runs from an unpacked sdist.
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/shekel-dev/shekel"
# The Pythons CI runs the suite on (.ci/run: 3.10, and the newest the machine has), all of them checked.
PYTHONS = {"3.10", "3.11", "3.12", "3.13"}

pytest.importorskip("setuptools", minversion="77")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    source = tmp_path_factory.mktemp("source") / "shekel"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "benchmarks"
        ),
    )
    out = source / "out"
    code = (
        "from setuptools import build_meta as backend\n"
        "print('BUILT', backend.build_wheel('out'))\n"
        "print('BUILT', backend.build_sdist('out'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wheel_name, sdist_name = [
        line.split()[1] for line in done.stdout.splitlines() if line.startswith("BUILT ")
    ]
    yield out / wheel_name, out / sdist_name


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_the_wheel_carries_the_license_and_only_the_package(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_file).decode()
    assert text.startswith("MIT License") and "Copyright (c) 2026 The shekel developers" in text
    assert {n.split("/")[0] for n in names if not n.startswith("shekel-")} == {"shekel", "shekel_autorun.pth"}
    assert "shekel/py.typed" in names and "shekel/integrations/langchain.py" in names


def test_the_wheel_carries_the_command_and_the_start_up_hook(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        assert "shekel = shekel.cli:main" in archive.read(entry_points).decode()
        hook = archive.read("shekel_autorun.pth").decode()
        assert "shekel_autorun.pth," in archive.read(record).decode()  # pip uninstall removes it
    assert "shekel/__main__.py" in names and "shekel/cli/_run.py" in names
    # One line, acting only when SHEKEL_RUN is set (site runs lines that start with "import").
    assert hook.count("\n") == 1 and hook.startswith("import os;") and 'os.environ.get("SHEKEL_RUN")' in hook


def test_the_metadata_a_package_index_shows(built: tuple[Path, Path]) -> None:
    meta = wheel_metadata(built[0])
    assert meta["Name"] == "shekel"
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert meta["Requires-Python"] == ">=3.10"
    urls = dict(value.split(", ", 1) for value in meta.get_all("Project-URL", []))
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(url.startswith(REPOSITORY) for url in urls.values()) and urls["Repository"] == REPOSITORY
    classifiers = set(meta.get_all("Classifier", []))
    assert {
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "Operating System :: OS Independent",
        "Typing :: Typed",
    } <= classifiers
    versions = {
        c.rsplit(" :: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions == PYTHONS
    assert any(r.startswith("packaging") for r in meta.get_all("Requires-Dist", []))


def test_the_readme_links_work_on_a_package_index_page(built: tuple[Path, Path]) -> None:
    meta = wheel_metadata(built[0])
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert isinstance(description, str) and "Hard spending limits" in description
    links = re.findall(r"\]\(([^)]*)\)", description)
    assert links, "the README has no links"
    relative = [link for link in links if not link.startswith(("https://", "http://"))]
    assert not relative, f"relative links break on a package index page: {relative}"
    pages = [link.removeprefix(f"{REPOSITORY}/blob/main/") for link in links if "/blob/main/" in link]
    missing = [page for page in pages if not (ROOT / page).exists()]
    assert not missing, f"the README links to files that are not in the repository: {missing}"


def test_the_sdist_carries_the_tests_and_what_they_read(built: tuple[Path, Path]) -> None:
    _, sdist = built
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        shipped = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    assert {
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "CHANGELOG.md",
        "setup.py",
        "shekel_autorun.pth",
    } <= shipped
    read_by_tests = [
        path.relative_to(ROOT).as_posix()
        for folder in ("tests", "docs")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    missing = [name for name in read_by_tests if name not in shipped]
    assert not missing, f"the sdist lacks files its tests read: {missing}"
    assert not [name for name in shipped if "__pycache__" in name or name.endswith(".pyc")]
