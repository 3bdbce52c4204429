"""The mutation fuzzer (mutate.py) and the SYN-scan run (scan.py): scripts,
also imported by the tests as ``fuzz.mutate`` and ``fuzz.scan``."""
