"""Operations: Prometheus metrics, liveness/readiness and the HTTP endpoint that serves them."""

from .health import HealthServer as HealthServer
from .health import serve_ops as serve_ops
from .lag import partition_lag as partition_lag
from .metrics import WorkerMetrics as WorkerMetrics
from .settings import OpsSettings as OpsSettings
from .status import HealthSnapshot as HealthSnapshot
from .status import WorkerHealth as WorkerHealth
from .status import WorkerStatus as WorkerStatus
