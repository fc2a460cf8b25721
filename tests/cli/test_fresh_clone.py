"""A fresh clone on a stock Debian Python (externally managed, PEP 668): `make run` and the README's test command work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.server import free_port

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = Path("/usr/bin/python3")
# Creating the environment installs every dependency from the package index.
INSTALL_SECONDS = 900

pytestmark = pytest.mark.skipif(
    not (DEBIAN_PYTHON.parent / "python3.11").exists() or not Path("/usr/lib/python3.11/EXTERNALLY-MANAGED").exists(),
    reason="needs Debian's externally managed /usr/bin/python3",
)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The committed HEAD cloned into a temporary directory, and an environment whose python3 is Debian's."""
    base = tmp_path_factory.mktemp("fresh")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    checkout = base / "smtp-config-service"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    subprocess.run(["git", "checkout", "-q", "--detach", head], cwd=checkout, check=True)
    bin_dir = base / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(DEBIAN_PYTHON)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYENV", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE", "SMTPCONF_"))
    }
    env["PATH"] = f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"
    env["HOME"] = str(base)  # no user-level pip or pyenv configuration
    return checkout, env


def test_make_run_serves_from_a_project_venv(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    port = free_port()
    log_path = checkout.parent / "make-run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["make", "run", f"BIND=127.0.0.1:{port}"], cwd=checkout, env=env, stdout=log, stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + INSTALL_SECONDS
        healthy = False
        while not healthy and time.monotonic() < deadline:
            assert process.poll() is None, f"make run exited with {process.returncode}:\n{log_path.read_text()}"
            try:
                healthy = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.5)  # still installing or booting
        assert healthy, log_path.read_text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    output = log_path.read_text()
    venv = checkout / ".venv"
    assert f"using {venv} (Python 3.11" in output
    assert "externally-managed-environment" not in output
    assert "admin token" in output
    # The service ran from the project's environment, created from Debian's interpreter.
    debian_version = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert f"version = {debian_version}\n" in (venv / "pyvenv.cfg").read_text()
    assert (venv / "bin" / "smtpconf").exists()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True).stdout == ""


def test_readme_test_command_runs_in_the_project_venv_and_installs_once(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    command = ["./scripts/test", "tests/api/test_openapi.py", "-q", "-p", "no:cacheprovider"]
    first = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=INSTALL_SECONDS)
    assert first.returncode == 0, first.stdout + first.stderr
    assert " passed" in first.stdout
    assert f"using {checkout / '.venv'}" in first.stderr
    # Nothing changed in pyproject.toml or the constraints: the second run installs nothing.
    second = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "installing" not in second.stderr
    assert f"using {checkout / '.venv'}" in second.stderr


def test_a_python_without_venv_support_gets_debians_python3_venv_installed_first(tmp_path: Path) -> None:
    """As root with apt-get, a missing ensurepip (Debian without python3-venv) is installed, then the venv created."""
    if os.geteuid() != 0:
        pytest.skip("the package is installed as root only")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    installed = tmp_path / "apt-installed"
    # apt-get records what it was asked for; python3 lacks ensurepip until the package is "installed".
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {installed}\n')
    (bin_dir / "python3").write_text(
        "#!/bin/sh\n"
        f'if [ ! -s {installed} ] || ! grep -q "install.*python3-venv" {installed}; then\n'
        f'  exec {DEBIAN_PYTHON} -c "import sys; sys.modules[\'ensurepip\'] = None; exec(sys.argv[1])" "$2"\n'
        "fi\n"
        f'exec {DEBIAN_PYTHON} "$@"\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", "-c", f". {ROOT / 'scripts' / 'venv.sh'} && _venv_create"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "installing the python3-venv Debian package" in done.stderr
    assert "install -y -qq --no-install-recommends python3-venv" in installed.read_text()
    assert (project / ".venv" / "bin" / "pip").exists()
