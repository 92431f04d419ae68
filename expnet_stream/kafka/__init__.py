"""Kafka plumbing: embedded broker, client settings, topics."""

from .broker import EmbeddedBroker as EmbeddedBroker
from .broker import free_port as free_port
