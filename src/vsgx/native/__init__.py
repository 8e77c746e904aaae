"""Unmodified SGX programs under vsgx: the C library injected into them
(their driver, vDSO and CPUID) and the launcher that is their AVM."""

from vsgx.native.build import NativeBuildError, library_path

__all__ = ["NativeBuildError", "library_path"]
