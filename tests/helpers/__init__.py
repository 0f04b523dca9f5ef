"""Tiny helper programs for the driver and pool tests (run with sys.executable); /proc probes."""
