"""TensorRT plan manifests and the plan cache that never serves a wrong plan.

A TensorRT plan only runs on the GPU architecture and TensorRT version it was built for, and only means what the model
it was built from means. Every plan therefore travels with a ``manifest.json`` (:class:`Manifest`) that records what
it is, and workers find plans through :class:`PlanCache`, which looks them up by the five fields that decide whether
a plan may be used (:class:`PlanKey`) and refuses anything else, naming the field that differs and the command that
builds the right plan.

Cache layout (one folder per key; safe to share on a volume between the build Job and the workers)::

    <root>/<model_id>/<model_hash[:16]>/<gpu>-sm<cc>/trt<version>/<precision>/
        model.plan       the serialized engine
        manifest.json    written last; a folder without it is ignored (a build in progress or one that failed)

Pure data: no TensorRT, torch or GPU needed to read manifests or look plans up.

>>> PlanKey("ab" * 32, "NVIDIA L4", "8.9", "10.3.0", "fp16").relative_dir().as_posix()
'unknown-model/abababababababab/nvidia-l4-sm89/trt10.3.0/fp16'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import EngineError
from ..fileio import file_sha256, read_json, write_model_json
from ..models.contract import PreprocessContract

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "PLAN_NAME",
    "PRECISIONS",
    "CachedPlan",
    "EngineBuildError",
    "EngineMismatchError",
    "Manifest",
    "ParityError",
    "ParityReport",
    "PlanCache",
    "PlanKey",
    "PlanMissingError",
    "Precision",
    "Profile",
    "TensorRTUnavailableError",
    "build_command",
    "compute_model_hash",
    "plan_problem",
    "precision_flags",
    "precision_name",
]

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
REJECTED_MANIFEST_NAME = "manifest.rejected.json"
PLAN_NAME = "model.plan"

Precision = Literal["fp32", "fp16", "int8", "int8-fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-fp16")


# -- errors ----------------------------------------------------------------------------------------------------------


class TensorRTUnavailableError(EngineError):
    """TensorRT or a CUDA GPU is not available on this machine (the CLI exits 4)."""


class EngineBuildError(EngineError):
    """Building a TensorRT plan failed: ONNX parser errors, unsupported precision, builder failure (CLI exit 5)."""


class ParityError(EngineError):
    """A built plan's outputs differ from ONNX Runtime beyond the tolerance (CLI exit 3); the plan is not installed."""


class EngineMismatchError(EngineError):
    """No plan fits this model / GPU / TensorRT / precision; the message names the differing fields.

    Attributes:
        differences: ``(field, expected, found)`` of the closest plan found, empty when none was found at all.
        command: the ``expnet-stream build-engine ...`` command that builds the right plan.
    """

    def __init__(self, message: str, *, differences: tuple[tuple[str, str, str], ...] = (), command: str = "") -> None:
        super().__init__(message)
        self.differences = differences
        self.command = command


class PlanMissingError(EngineMismatchError):
    """The cache holds no plan at all for this model (nothing to compare with)."""


# -- values ----------------------------------------------------------------------------------------------------------


def precision_name(*, fp16: bool, int8: bool) -> Precision:
    """Precision tag of the builder flags: ``fp32``, ``fp16``, ``int8`` or ``int8-fp16`` (INT8 with FP16 fallback).

    >>> precision_name(fp16=True, int8=False), precision_name(fp16=True, int8=True)
    ('fp16', 'int8-fp16')
    """
    if int8:
        return "int8-fp16" if fp16 else "int8"
    return "fp16" if fp16 else "fp32"


def precision_flags(precision: str) -> tuple[bool, bool]:
    """``(fp16, int8)`` builder flags of a precision tag (inverse of :func:`precision_name`)."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return "fp16" in precision, precision.startswith("int8")


def compute_model_hash(contract: PreprocessContract, onnx_sha256: str) -> str:
    """SHA-256 identifying a model: its preprocessing contract (canonical JSON) and its ONNX file's SHA-256.

    Two plans share a model hash only when they were built from the same bytes and mean the same preprocessing.
    """
    canonical = json.dumps(contract.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256()
    for part in ("expnet-stream/model-hash-v1", canonical, onnx_sha256.lower()):
        digest.update(part.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _slug(text: str) -> str:
    """Lower-case ``[a-z0-9._-]`` folder name (``NVIDIA GeForce RTX 4090`` -> ``nvidia-geforce-rtx-4090``)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-.")
    return slug or "unknown"


@dataclass(frozen=True)
class PlanKey:
    """The five fields that decide whether a plan may run here; equal keys mean interchangeable plans."""

    model_hash: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: str
    model_id: str = "unknown-model"

    FIELDS = ("model_hash", "compute_capability", "gpu_name", "tensorrt_version", "precision")

    def relative_dir(self) -> Path:
        """Folder of this key's plan below a cache root (see the module docstring for the layout)."""
        cc = self.compute_capability.replace(".", "")
        return (
            Path(_slug(self.model_id))
            / self.model_hash[:16]
            / f"{_slug(self.gpu_name)}-sm{_slug(cc)}"
            / f"trt{_slug(self.tensorrt_version)}"
            / _slug(self.precision)
        )

    def differences(self, found: PlanKey) -> tuple[tuple[str, str, str], ...]:
        """``(field, expected, found)`` for every field of :attr:`FIELDS` where ``found`` differs from ``self``."""
        return tuple(
            (name, str(getattr(self, name)), str(getattr(found, name)))
            for name in self.FIELDS
            if getattr(self, name) != getattr(found, name)
        )


class Profile(BaseModel):
    """One TensorRT optimization profile: min / opt / max shape of the input tensor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_name: str = Field(description="Network input the profile applies to (the contract's input_name).")
    min_shape: tuple[int, ...] = Field(description="Smallest input shape the plan accepts, e.g. (1, 3, 224, 224).")
    opt_shape: tuple[int, ...] = Field(description="Shape the builder tunes kernels for.")
    max_shape: tuple[int, ...] = Field(description="Largest input shape the plan accepts.")

    @property
    def min_batch(self) -> int:
        return self.min_shape[0]

    @property
    def max_batch(self) -> int:
        return self.max_shape[0]


class ParityReport(BaseModel):
    """How far the plan's outputs are from ONNX Runtime on real face crops."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="Where the crops came from, e.g. 'skimage:astronaut' or a folder path.")
    samples: int = Field(ge=0, description="Number of crops compared.")
    batch_sizes: tuple[int, ...] = Field(description="Batch sizes the plan was run with.")
    max_abs_diff: float = Field(description="max |plan - onnxruntime| over all outputs.")
    max_abs_reference: float = Field(description="max |onnxruntime| over all outputs (the scale of the outputs).")
    rel_error: float = Field(description="max_abs_diff / max(max_abs_reference, 1e-12).")
    tolerance: float = Field(description="Largest accepted rel_error.")
    passed: bool = Field(description="rel_error <= tolerance (False also for NaN).")


class Manifest(BaseModel):
    """What a TensorRT plan is, written as ``manifest.json`` next to it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = Field(default=1, description="Version of this manifest's JSON layout.")
    model_id: str = Field(description="contract.model_id, e.g. 'expnet_resnet101@<weights>'.")
    model_hash: str = Field(description="compute_model_hash(contract, onnx_sha256): the model this plan computes.")
    onnx_sha256: str = Field(description="SHA-256 of the ONNX file the plan was built from.")
    onnx_file: str = Field(description="Path of that ONNX file at build time (informative).")
    tensorrt_version: str = Field(description="tensorrt.__version__ of the builder; plans run only on the same one.")
    gpu_name: str = Field(description="Name of the build GPU, e.g. 'NVIDIA L4'.")
    compute_capability: str = Field(description="Build GPU's compute capability 'major.minor', e.g. '8.9'.")
    precision: Precision = Field(description="fp32, fp16, int8 or int8-fp16 (INT8 with FP16 fallback).")
    profiles: tuple[Profile, ...] = Field(description="Optimization profiles (one, on the dynamic batch axis).")
    contract: PreprocessContract = Field(description="Preprocessing contract of the model (input size, mean, ...).")
    plan_file: str = Field(default=PLAN_NAME, description="Plan file name, relative to the manifest's folder.")
    plan_sha256: str = Field(description="SHA-256 of the plan file; a plan that does not match is refused.")
    plan_bytes: int = Field(ge=0, description="Size of the plan file.")
    built_at: dt.datetime = Field(description="UTC time the build finished.")
    build_seconds: float = Field(ge=0.0, description="Wall time of parse + build.")
    builder: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Builder options: workspace_mb, timing cache, INT8 calibration source, ..."
    )
    parity: ParityReport | None = Field(default=None, description="Parity check against ONNX Runtime.")

    @property
    def key(self) -> PlanKey:
        return PlanKey(
            self.model_hash,
            self.gpu_name,
            self.compute_capability,
            self.tensorrt_version,
            self.precision,
            model_id=self.model_id,
        )

    @property
    def max_batch(self) -> int:
        return min(p.max_batch for p in self.profiles) if self.profiles else 1

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename) and return the path."""
        return write_model_json(path, self, EngineError, "manifest")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest; raises EngineError naming the file when it is missing or invalid."""
        data = read_json(path, EngineError, "manifest")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EngineError(f"invalid manifest {path}: {exc}") from exc

    def summary(self) -> str:
        """Human-readable multi-line description (``expnet-stream engine-info``)."""
        prof = ", ".join(f"{p.input_name} {p.min_shape}..{p.opt_shape}..{p.max_shape}" for p in self.profiles)
        lines = [
            f"model_id            {self.model_id}",
            f"model_hash          {self.model_hash}",
            f"onnx_sha256         {self.onnx_sha256}",
            f"tensorrt_version    {self.tensorrt_version}",
            f"gpu                 {self.gpu_name} (sm {self.compute_capability})",
            f"precision           {self.precision}",
            f"profiles            {prof}",
            f"plan                {self.plan_file} ({self.plan_bytes} bytes, sha256 {self.plan_sha256[:16]}...)",
            f"built_at            {self.built_at.isoformat()} in {self.build_seconds:.1f} s",
        ]
        if self.parity is not None:
            p = self.parity
            lines.append(
                f"parity              {'passed' if p.passed else 'FAILED'}: rel_error {p.rel_error:.3g} "
                f"(max_abs_diff {p.max_abs_diff:.3g}, tolerance {p.tolerance:.3g}) on {p.samples} crops from {p.source}"
            )
        return "\n".join(lines)


def build_command(
    onnx_path: str | os.PathLike[str] | None, cache_root: str | os.PathLike[str], precision: str, max_batch: int = 32
) -> str:
    """The ``expnet-stream build-engine`` command that builds ``precision`` plans of a model into a cache root."""
    fp16, int8 = precision_flags(precision) if precision in PRECISIONS else (False, False)
    parts = ["expnet-stream", "build-engine", "--onnx", str(onnx_path or "<model.onnx>"), "--out", str(cache_root)]
    parts.append("--keyed")
    if fp16:
        parts.append("--fp16")
    if int8:
        parts += ["--int8", "--calib", "<face-crops-dir>"]
    parts += ["--max-batch", str(max_batch)]
    return shlex.join(parts).replace("'<model.onnx>'", "<model.onnx>").replace("'<face-crops-dir>'", "<face-crops-dir>")


# -- the cache -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedPlan:
    """A plan found in the cache: its file and its manifest."""

    plan_path: Path
    manifest: Manifest

    @property
    def directory(self) -> Path:
        return self.plan_path.parent


def plan_problem(entry: CachedPlan) -> str | None:
    """Why a plan whose key fits must still not be served (no passed parity, missing or altered file), or None."""
    m = entry.manifest
    if m.parity is None or not m.parity.passed:
        return f"{entry.directory}: the plan has no passed parity check against ONNX Runtime"
    if not entry.plan_path.is_file():
        return f"{entry.plan_path}: plan file is missing"
    digest = file_sha256(entry.plan_path)
    if digest != m.plan_sha256:
        return (
            f"{entry.plan_path}: plan sha256 {digest[:16]}... != manifest {m.plan_sha256[:16]}... (corrupt or replaced)"
        )
    return None


BuildOnMiss = Callable[[Path], Manifest]
"""``build(plan_dir) -> manifest``: builds the requested plan into ``plan_dir`` (e.g. a partial of build_engine)."""


class PlanCache:
    """Plans stored under ``root``, one folder per :class:`PlanKey`.

    :meth:`lookup` returns the plan of a key or raises :class:`EngineMismatchError`: a plan is served only when its
    manifest's key equals the requested one, its build passed the parity check and the plan file's SHA-256 equals the
    manifest's.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def dir_for(self, key: PlanKey) -> Path:
        return self.root / key.relative_dir()

    def entries(self) -> Iterator[CachedPlan]:
        """Every readable manifest below the root (unreadable ones are logged and skipped)."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob(MANIFEST_NAME)):
            try:
                manifest = Manifest.from_json(path)
            except EngineError as exc:
                logger.warning("skipping unreadable plan manifest path=%s error=%s", path, exc)
                continue
            yield CachedPlan(path.parent / manifest.plan_file, manifest)

    def lookup(
        self,
        model_hash: str,
        gpu_name: str,
        compute_capability: str,
        trt_version: str,
        precision: str,
        *,
        model_id: str = "unknown-model",
        onnx_path: str | os.PathLike[str] | None = None,
        build: BuildOnMiss | None = None,
        max_batch: int = 32,
    ) -> Path:
        """Path of the plan for this key; builds it with ``build`` on a miss when given, else refuses.

        Raises:
            EngineMismatchError: no valid plan for the key; the message says which field of the closest plan differs
                (expected vs found) and the ``expnet-stream build-engine`` command that builds the right one.
            PlanMissingError: the cache holds no plan of this model at all (a subclass of EngineMismatchError).
        """
        return self.find(
            PlanKey(model_hash, gpu_name, compute_capability, trt_version, precision, model_id=model_id),
            onnx_path=onnx_path,
            build=build,
            max_batch=max_batch,
        ).plan_path

    def find(
        self,
        key: PlanKey,
        *,
        onnx_path: str | os.PathLike[str] | None = None,
        build: BuildOnMiss | None = None,
        max_batch: int = 32,
    ) -> CachedPlan:
        """Like :meth:`lookup`, with the manifest."""
        if key.precision not in PRECISIONS:
            raise EngineError(f"unknown precision {key.precision!r}; known: {', '.join(PRECISIONS)}")
        command = build_command(onnx_path, self.root, key.precision, max_batch)
        problems: list[str] = []
        candidates: list[CachedPlan] = []
        for entry in self.entries():
            if entry.manifest.key != key:
                candidates.append(entry)
                continue
            problem = plan_problem(entry)
            if problem is None:
                logger.info(
                    "plan cache hit path=%s model_id=%s precision=%s", entry.plan_path, key.model_id, key.precision
                )
                return entry
            problems.append(problem)
        if build is not None:
            plan_dir = self.dir_for(key)
            logger.warning(
                "plan cache miss, building (build_on_miss) model_id=%s dir=%s problems=%s",
                key.model_id,
                plan_dir,
                problems,
            )
            plan_dir.mkdir(parents=True, exist_ok=True)
            manifest = build(plan_dir)
            entry = CachedPlan(plan_dir / manifest.plan_file, manifest)
            if manifest.key != key:
                raise EngineMismatchError(
                    self._mismatch_message(key, entry, command, prefix="the plan just built does not fit: "),
                    differences=key.differences(manifest.key),
                    command=command,
                )
            problem = plan_problem(entry)
            if problem is not None:
                raise EngineMismatchError(f"the plan just built is not usable: {problem}", command=command)
            return entry
        raise self._refusal(key, candidates, problems, command)

    # -- helpers -------------------------------------------------------------------------------------------------

    def _refusal(
        self, key: PlanKey, candidates: list[CachedPlan], problems: list[str], command: str
    ) -> EngineMismatchError:
        if problems:
            return EngineMismatchError(
                f"no usable TensorRT plan for {key.model_id} in {self.root}: " + "; ".join(problems) + f". Rebuild it: "
                f"{command}",
                command=command,
            )
        if not candidates:
            return PlanMissingError(
                f"no TensorRT plan for {key.model_id} (model_hash {key.model_hash[:16]}..., {key.gpu_name} sm "
                f"{key.compute_capability}, TensorRT {key.tensorrt_version}, {key.precision}) in {self.root}: the "
                f"cache is empty. Build one on this GPU type with: {command}",
                command=command,
            )
        # The closest plan: same model first, then fewest differing fields.
        best = min(
            candidates,
            key=lambda c: (c.manifest.model_hash != key.model_hash, len(key.differences(c.manifest.key))),
        )
        return EngineMismatchError(
            self._mismatch_message(key, best, command, others=len(candidates) - 1),
            differences=key.differences(best.manifest.key),
            command=command,
        )

    def _mismatch_message(
        self, key: PlanKey, found: CachedPlan, command: str, *, others: int = 0, prefix: str = ""
    ) -> str:
        diffs = "; ".join(
            f"{name}: expected {exp!r}, found {got!r}" for name, exp, got in key.differences(found.manifest.key)
        )
        more = f" ({others} other plan(s) in the cache differ too)" if others else ""
        return (
            f"{prefix}refusing TensorRT plan {found.plan_path} for {key.model_id}: {diffs}{more}. A plan runs only "
            "on the model, GPU type, TensorRT version and precision it was built for. "
            f"Build the right one with: {command}"
        )


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
