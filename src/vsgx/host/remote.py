"""Connecting the host API to an EVM in another process or VM."""

from vsgx.avm.remote import NO_SEV_BANNER, RemoteEvm, connect_evm

__all__ = ["NO_SEV_BANNER", "RemoteEvm", "connect_evm"]
