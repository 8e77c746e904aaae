"""Enclaves shipped with vsgx, built with the system's gcc: the sample enclave
and the enclave runtime (C + assembly) that vsgx's own test enclaves use."""

from vsgx.samples.build import (
    HELLO_DIR,
    PARAMS_DIR,
    RUNTIME_DIR,
    SAMPLES_DIR,
    BuildError,
    build_params,
    build_sample,
    compile_enclave,
    runtime_sources,
)

__all__ = ["HELLO_DIR", "PARAMS_DIR", "RUNTIME_DIR", "SAMPLES_DIR", "BuildError",
           "build_params", "build_sample", "compile_enclave", "runtime_sources"]
