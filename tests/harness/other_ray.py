"""Ray clusters that are not like CastRay's own: another Ray release, another machine user.

Both are real: another release is installed once, with pip, in a virtualenv of its own
(cached between runs); another user is a throwaway system user created for the test and
removed after it, whose raylets run under its own uid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness.raycluster import RunAs

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "castray-tests"
RAY_CLI = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"


def ray_release(version: str) -> list[str]:
    """Ray's CLI of release ``version``, installed in a virtualenv of its own on first use."""
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    venv = CACHE / f"ray-{version}-{python}"
    done = venv / "installed"
    if not done.exists():
        # A virtualenv records its own path, so it is built where it lives; the marker says
        # that a build finished (one cut short is started over).
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", f"ray[default]=={version}"],
            check=True,
            timeout=900,
        )
        done.touch()
    return [str(venv / "bin" / "ray")]


@contextmanager
def another_user() -> Iterator[RunAs]:
    """A throwaway user that can run this Ray: Debian's python3 of our minor version, with a
    hard-linked copy of our site-packages where that user can read it."""
    if os.geteuid() != 0:
        pytest.skip("creating another user needs root")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("needs /usr/bin/python3, useradd and runuser")
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    theirs = subprocess.run(
        [python, "-c", "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if theirs != ours:
        pytest.skip(f"{python} is Python {theirs}; Ray's binaries here are built for {ours}")
    name = f"castray-t{os.getpid()}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
    )
    home = Path(tempfile.mkdtemp(prefix="castray-user-home-"))
    packages = Path(tempfile.mkdtemp(prefix="castray-user-ray-"))
    try:
        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        packages.chmod(0o755)
        site = packages / "site-packages"
        linked = subprocess.run(
            ["cp", "-al", sysconfig.get_paths()["purelib"], str(site)], capture_output=True
        )
        if linked.returncode != 0:  # another file system: copy instead
            shutil.copytree(sysconfig.get_paths()["purelib"], site, symlinks=True)
        yield RunAs(
            user=name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            ray=[python, "-c", RAY_CLI],
            env={"HOME": str(home), "PYTHONPATH": str(site)},
        )
    finally:
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(packages, ignore_errors=True)
