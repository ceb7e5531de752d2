"""The event bus on Kafka (aiokafka)."""

from tai_common.kafka.bus import KafkaBus

__all__ = ["KafkaBus"]
