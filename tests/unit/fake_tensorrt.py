"""A FAKE ``tensorrt`` module for tests: TensorRT cannot be installed or run on these machines (no GPU, no NVIDIA
index).

It mimics the slice of the TensorRT 10 Python API that expnet-stream uses (Builder, OnnxParser, builder config,
optimization profile, timing cache, INT8 calibrator, Runtime, engine, execution context) and records every call. Its
"plan" is a JSON header plus the ONNX bytes, and its execution context "executes" by reading the input from the device
address it was given (CPU torch tensors stand in for CUDA buffers), running ONNX Runtime on the embedded ONNX and
writing the result to the output address, so the wrapper's buffers, shapes, padding and chunking are checked end to
end. ``perturb`` adds an error to every output to exercise the parity failure path.

Nothing here says anything about real TensorRT numerics or GPU behaviour: those are tests/gpu, skipped without CUDA.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

MAGIC = b"FAKE-TRT-PLAN\n"


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:  # overridden
        pass


class Logger(ILogger):
    WARNING = Severity.WARNING

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    TF32 = 2


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


def _read(ptr: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(ptr)).reshape(shape).copy()


def _write(ptr: int, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, np.float32)
    ctypes.memmove(ptr, arr.ctypes.data, arr.nbytes)


@dataclass
class FakeConfig:
    """Knobs of one fake module (set by the test) and what the code under test did (read by the test)."""

    version: str = "10.8.0.fake"
    perturb: float = 0.0
    parse_errors: list[dict[str, Any]] = field(default_factory=list)
    build_returns_none: bool = False
    timing_cache_mismatch: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    calib_batches: list[np.ndarray] = field(default_factory=list)
    executions: list[tuple[int, ...]] = field(default_factory=list)


def make_fake_tensorrt(**knobs: Any) -> types.SimpleNamespace:
    """A fresh fake ``tensorrt`` module; ``module.fake`` is its :class:`FakeConfig` (knobs and recorded calls)."""
    cfg = FakeConfig(**knobs)
    rec = cfg.calls.append

    class ParserError:
        def __init__(self, e: dict[str, Any]) -> None:
            self._e = e

        def code(self) -> str:
            return "ErrorCode.UNSUPPORTED_NODE"

        def desc(self) -> str:
            return str(self._e["desc"])

        def node(self) -> int:
            return int(self._e["node"])

        def node_name(self) -> str:
            return str(self._e["name"])

        def node_operator(self) -> str:
            return str(self._e["op"])

    class Network:
        def __init__(self) -> None:
            self.inputs: list[types.SimpleNamespace] = []
            self.outputs: list[types.SimpleNamespace] = []
            self.onnx = b""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            return len(self.outputs)

        def get_input(self, i: int) -> types.SimpleNamespace:
            return self.inputs[i]

        def get_output(self, i: int) -> types.SimpleNamespace:
            return self.outputs[i]

    def _dims(value_info: Any) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network = network
            self.errors: list[ParserError] = []

        def parse(self, model: bytes, path: str | None = None) -> bool:
            rec(("parse", path))
            if cfg.parse_errors:
                self.errors = [ParserError(e) for e in cfg.parse_errors]
                return False
            proto = onnx.load_from_string(bytes(model))
            self.network.inputs = [types.SimpleNamespace(name=i.name, shape=_dims(i)) for i in proto.graph.input]
            self.network.outputs = [types.SimpleNamespace(name=o.name, shape=_dims(o)) for o in proto.graph.output]
            self.network.onnx = bytes(model)
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            rec(("profile.set_shape", (name, tuple(lo), tuple(opt), tuple(hi))))
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data + b"entry;"

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags: set[BuilderFlag] = set()
            self.pools: dict[MemoryPoolType, int] = {}
            self.profiles: list[Profile] = []
            self.int8_calibrator: Any = None
            self.calibration_profile: Profile | None = None
            self.timing_cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            rec(("set_memory_pool_limit", (pool, size)))
            self.pools[pool] = size

        def set_flag(self, flag: BuilderFlag) -> None:
            rec(("set_flag", flag))
            self.flags.add(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile: Profile) -> bool:
            self.calibration_profile = profile
            return True

        def create_timing_cache(self, data: bytes) -> TimingCache:
            rec(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            rec(("set_timing_cache", (cache.data, ignore_mismatch)))
            if cfg.timing_cache_mismatch and cache.data:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            if self.timing_cache is None:
                raise RuntimeError("no timing cache")
            return self.timing_cache

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            rec(("create_network", flags))
            return Network()

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
            rec(("build_serialized_network", sorted(f.name for f in config.flags)))
            if cfg.build_returns_none:
                self.logger.log(Severity.ERROR, "fake builder: out of workspace memory")
                return None
            calib = config.int8_calibrator
            if BuilderFlag.INT8 in config.flags and calib is not None:
                cached = calib.read_calibration_cache()
                if cached is None:
                    size = calib.get_batch_size()
                    name = network.inputs[0].name
                    shape = (size, *network.inputs[0].shape[1:])
                    while (ptrs := calib.get_batch([name])) is not None:
                        cfg.calib_batches.append(_read(ptrs[0], shape))
                    calib.write_calibration_cache(b"fake-calibration-table")
                rec(("calibrated", cached is not None))
            (profile,) = config.profiles
            header = {
                "version": cfg.version,
                "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()},
                "outputs": [o.name for o in network.outputs],
            }
            if config.timing_cache is not None:
                config.timing_cache.data += b"built;"
            return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    class ExecutionContext:
        def __init__(self, engine: CudaEngine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(shape)
            lo, _, hi = self.engine.profile[name]
            if not lo[0] <= shape[0] <= hi[0] or shape[1:] != lo[1:]:
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.engine.input_names:
                return self.shapes[name]
            batch = self.shapes[self.engine.input_names[0]][0]
            return (batch, *self.engine.out_dims[name][1:])

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            name = self.engine.input_names[0]
            shape = self.shapes[name]
            cfg.executions.append(shape)
            x = _read(self.addresses[name], shape)
            outs = self.engine.session.run(None, {name: x})
            for out_name, y in zip(self.engine.output_names, outs, strict=True):
                _write(self.addresses[out_name], np.asarray(y, np.float32) + np.float32(cfg.perturb))
            return True

    class CudaEngine:
        def __init__(self, header: dict[str, Any], onnx_bytes: bytes) -> None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            self.session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.profile = {k: tuple(tuple(s) for s in v) for k, v in header["profile"].items()}
            proto = onnx.load_from_string(onnx_bytes)
            self.in_dims = {i.name: _dims(i) for i in proto.graph.input}
            self.out_dims = {o.name: _dims(o) for o in proto.graph.output}

        @property
        def num_io_tensors(self) -> int:
            return len(self.input_names) + len(self.output_names)

        def get_tensor_name(self, i: int) -> str:
            return [*self.input_names, *self.output_names][i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if name in self.input_names else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            return DataType.FLOAT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.in_dims.get(name) or self.out_dims[name]

        def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
            return list(self.profile[name])

        def create_execution_context(self) -> ExecutionContext:
            rec(("create_execution_context", None))
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> CudaEngine | None:
            rec(("deserialize_cuda_engine", len(plan)))
            plan = bytes(plan)
            if not plan.startswith(MAGIC):
                self.logger.log(Severity.ERROR, "fake runtime: not a plan")
                return None
            header_line, _, onnx_bytes = plan[len(MAGIC) :].partition(b"\n")
            header = json.loads(header_line)
            if header["version"] != cfg.version:
                self.logger.log(Severity.ERROR, f"fake runtime: plan of TensorRT {header['version']}")
                return None
            return CudaEngine(header, onnx_bytes)

    return types.SimpleNamespace(
        __name__="tensorrt",
        __version__=cfg.version,
        fake=cfg,
        ILogger=ILogger,
        Logger=Logger,
        DataType=DataType,
        TensorIOMode=TensorIOMode,
        MemoryPoolType=MemoryPoolType,
        BuilderFlag=BuilderFlag,
        IInt8EntropyCalibrator2=IInt8EntropyCalibrator2,
        Builder=Builder,
        OnnxParser=OnnxParser,
        Runtime=Runtime,
    )
