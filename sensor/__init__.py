"""xfer-sensor: file-transfer C2/exfiltration sensor (T1071.002)."""

__version__ = "0.1.0"
