"""The package installs as a wheel under the lnpt namespace and exposes the `lnpt` command."""
import subprocess
import sys
import sysconfig
import zipfile

import pytest


@pytest.mark.slow
def test_wheel_installs_namespaced_packages_only(repo_root, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(repo_root)], check=True)
    (wheel,) = tmp_path.glob("lnpt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("lnpt-")}
    assert top == {"lnpt"}, f"generic top-level names in wheel: {top}"
    assert "lnpt/shared/protocol/guidance_pb2.pyi" in names
    # Install into a fresh venv that borrows only the third-party dependencies from this one.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "-q", "--no-deps", str(wheel)], check=True)
    # Only after installing: pip would otherwise see this environment's lnpt and skip the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = "import lnpt.shared, lnpt.cloud, lnpt.edge, lnpt.lab; print(lnpt.shared.__file__)"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert str(site) in out
    help_text = subprocess.run([str(venv / "bin" / "lnpt"), "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "usage: lnpt" in help_text


def test_cli_help_and_version():
    out = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("lnpt ")
    help_text = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "data" in help_text
