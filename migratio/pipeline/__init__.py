"""The pipeline runner: a typed Context, status sinks, the services steps use, retry vs fail."""
