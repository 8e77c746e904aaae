"""vsgx: run unmodified, signed Intel SGX enclaves on machines without SGX."""

__version__ = "0.1.0"
