"""Unpack Debian packages into the benchmark cache without installing them.

``apt-get download NAME`` fetches the ``.deb`` into the current folder and
``dpkg-deb -x`` unpacks it into a folder of our choosing, so nothing is
installed system-wide and no root is needed beyond what ``apt-get download``
asks for (it needs a package list: run ``apt-get update`` once).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pactframe.errors import InputError


def unpacked_package(name: str, root: Path) -> Path:
    """The folder holding Debian package ``name`` unpacked (fetched on first use)."""
    dest = root / "debian" / name
    if (dest / ".complete").exists():
        return dest
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise InputError(
                f"Debian package {name!r} is needed by the text benchmark but {tool!r} is not "
                "available; run on a Debian/Ubuntu machine or unpack the package by hand into "
                f"{dest} (dpkg-deb -x NAME.deb {dest}) and create {dest / '.complete'}."
            )
    download = root / "debian" / "_downloads"
    download.mkdir(parents=True, exist_ok=True)
    for old in download.glob(f"{name}_*.deb"):
        old.unlink()
    result = subprocess.run(
        ["apt-get", "download", name], cwd=download, capture_output=True, text=True
    )
    debs = sorted(download.glob(f"{name}_*.deb"))
    if result.returncode != 0 or not debs:
        raise InputError(
            f"Could not download Debian package {name!r} (apt-get download exited "
            f"{result.returncode}: {result.stderr.strip()[-300:]}). Run 'apt-get update' first, "
            "or fetch the .deb elsewhere and unpack it with dpkg-deb -x into " + str(dest) + "."
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True)
    (dest / ".complete").write_text(debs[-1].name + "\n")
    return dest
