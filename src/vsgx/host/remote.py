"""Connecting the host API to an EVM in another process or VM."""

from vsgx.avm import NO_SEV_BANNER, EvmRefused, RemoteEvm, connect_evm, set_defaults

__all__ = ["NO_SEV_BANNER", "EvmRefused", "RemoteEvm", "connect_evm", "set_defaults"]
