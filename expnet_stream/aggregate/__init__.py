"""aggregate stage: face tracks over time, smoothed coefficients and event-time emotion aggregates."""

from .settings import TemporalSettings as TemporalSettings
from .smoothing import TrackSmoother as TrackSmoother
from .temporal import StreamTemporal as StreamTemporal
from .temporal import TemporalResult as TemporalResult
from .windows import WindowAggregator as WindowAggregator
from .windows import WindowSpec as WindowSpec
