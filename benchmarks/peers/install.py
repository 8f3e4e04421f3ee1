"""Installs each peer into its own environment under benchmarks/.peers/ (git-ignored), once.

One venv per Python peer (their pins of redis-py and kombu disagree), one node_modules for
BullMQ. Never part of the project's dependencies. A peer that fails to install is reported
with the installer's last lines, and the run goes on without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT, log

PEERS_DIR = ROOT / "benchmarks" / ".peers"
INSTALL_TIMEOUT = 900  # seconds per peer

# What each peer installs: versions pinned so runs compare like with like.
PYTHON_PEERS = {
    "celery": ["celery[redis]==5.7.0"],
    "dramatiq": ["dramatiq[redis]==2.2.1"],
    "arq": ["arq==0.28.0"],
}
NODE_PEERS = {
    # BullMQ 6 takes its Redis client as an optional peer dependency: ioredis, named here.
    "bullmq": ["bullmq@6.7.0", "ioredis@5.11.1"],
}


@dataclass(frozen=True)
class Installed:
    name: str
    ok: bool
    command: list[str]  # the interpreter to run this peer's driver with
    env: dict[str, str]  # extra environment for it
    message: str = ""  # why it is not usable


def ensure(name: str) -> Installed:
    """The peer, installed now if it was not (or if its pins changed)."""
    folder = PEERS_DIR / name
    specs = PYTHON_PEERS.get(name) or NODE_PEERS[name]
    marker = folder / ".installed"
    try:
        if not (marker.exists() and json.loads(marker.read_text()) == specs):
            log(f"   installing {name} ({' '.join(specs)}) into {folder}")
            if name in PYTHON_PEERS:
                _install_python(folder, specs)
            else:
                _install_node(folder, specs)
            marker.write_text(json.dumps(specs))
    except (OSError, subprocess.SubprocessError, InstallError) as exc:
        return Installed(name, False, [], {}, f"install failed: {exc}")
    if name in PYTHON_PEERS:
        return Installed(name, True, [str(folder / "bin" / "python")], {})
    node = shutil.which("node") or "node"
    return Installed(name, True, [node], {"NODE_PATH": str(folder / "node_modules")})


class InstallError(Exception):
    pass


def _run(argv: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise InstallError(f"`{' '.join(argv[:3])} ...` exited with {done.returncode}: {tail}")


def _install_python(folder: Path, specs: list[str]) -> None:
    python = folder / "bin" / "python"
    if not python.exists():
        shutil.rmtree(folder, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", str(folder)])
        except InstallError:  # no ensurepip (Debian without python3-venv): pip from its wheel
            shutil.rmtree(folder, ignore_errors=True)
            _run([sys.executable, "-m", "venv", "--without-pip", str(folder)])
            _run([str(python), str(ROOT / "scripts" / "install_pip.py")])
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *specs])


def _install_node(folder: Path, specs: list[str]) -> None:
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise InstallError(f"{tool} is not on PATH")
    folder.mkdir(parents=True, exist_ok=True)
    package = folder / "package.json"
    if not package.exists():
        package.write_text(json.dumps({"name": "bench-peers", "private": True}) + "\n")
    _run(["npm", "install", "--no-audit", "--no-fund", "--silent", *specs], cwd=folder)
