"""modelrig: turn a bare machine into a running, verified model demo, reproducibly."""

__version__ = "0.1.0"
