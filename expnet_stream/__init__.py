"""expnet-stream: ExpNet 3D expression coefficients from live video over Kafka."""

__version__ = "0.1.0"
