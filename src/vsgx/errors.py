"""Errors that reach a vsgx user.

Every error caused by bad input from outside (a file, a key, a message, an
ioctl) is a ``VsgxError`` with a one-line message naming the problem; the CLI
prints it and exits non-zero, never with a traceback. SGX error *codes* and
CPU faults are different things and live in ``vsgx.arch.errors``.
"""

from __future__ import annotations


class VsgxError(Exception):
    """Base of all user-facing vsgx errors."""


class StructureError(VsgxError):
    """An architectural structure is malformed (size, reserved bytes or bits)."""


class ImageError(VsgxError):
    """An enclave image (ELF, SDK metadata, sidecar SIGSTRUCT) is malformed."""


class ConfigError(VsgxError):
    """An enclave signing configuration is invalid."""


class KeyFileError(VsgxError):
    """A signing key is unusable (not RSA-3072, exponent not 3, unreadable)."""


class SignatureError(VsgxError):
    """A SIGSTRUCT does not verify."""
