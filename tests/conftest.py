"""Shared fixtures: test enclaves are built by gcc during the run and signed
by vsgx itself; nothing here comes from another project."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vsgx.crypto import generate_signing_key
from vsgx.crypto.rsa import private_key_pem
from vsgx.image import parse_config, sign_enclave
from vsgx.samples import HELLO_DIR, RUNTIME_DIR, build_sample, compile_enclave

TESTS_DIR = Path(__file__).resolve().parent
PLAIN_DIR = TESTS_DIR / "enclaves" / "plain"


@dataclass(frozen=True)
class BuiltEnclave:
    unsigned: Path
    signed: Path  # the signed SDK file, or the ELF whose .sig sits next to it
    sigstruct: Path | None
    key: Path


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("enclaves")


@pytest.fixture(scope="session")
def signing_key(build_dir: Path) -> Path:
    path = build_dir / "key.pem"
    path.write_bytes(private_key_pem(generate_signing_key()))
    return path


@pytest.fixture(scope="session")
def other_signing_key(build_dir: Path) -> Path:
    path = build_dir / "other-key.pem"
    path.write_bytes(private_key_pem(generate_signing_key()))
    return path


def build_plain(output: Path) -> Path:
    sources = [PLAIN_DIR / "bootstrap.S", PLAIN_DIR / "encl.c", RUNTIME_DIR / "aes_cmac.c",
               RUNTIME_DIR / "sha256.c", RUNTIME_DIR / "string.c"]
    return compile_enclave(sources, output, PLAIN_DIR / "encl.lds", include_dirs=[PLAIN_DIR])


PLAIN_CONFIG = """
[enclave]
isvprodid = 7
isvsvn = 3
heap_pages = 16
misc_select = 1
"""


@pytest.fixture(scope="session")
def plain_enclave(build_dir: Path, signing_key: Path) -> BuiltEnclave:
    from vsgx.crypto import load_private_key

    elf = build_plain(build_dir / "plain.elf")
    signed = sign_enclave(elf.read_bytes(), parse_config(PLAIN_CONFIG),
                          load_private_key(signing_key))
    sig = elf.with_name(elf.name + ".sig")
    sig.write_bytes(signed.data)
    return BuiltEnclave(elf, elf, sig, signing_key)


@pytest.fixture(scope="session")
def sdk_enclave(build_dir: Path, signing_key: Path) -> BuiltEnclave:
    from vsgx.crypto import load_private_key

    unsigned = build_sample(build_dir / "sample")
    config = parse_config((HELLO_DIR / "hello.toml").read_text())
    signed = sign_enclave(unsigned.read_bytes(), config, load_private_key(signing_key))
    path = unsigned.with_name("hello.signed.so")
    path.write_bytes(signed.data)
    return BuiltEnclave(unsigned, path, None, signing_key)


ROOT_SECRET = bytes(range(32))


@pytest.fixture
def make_vm():
    """Build EnclaveVMs (root secret fixed, so keys are comparable)."""
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.vm import EnclaveVM

    def make(secret: bytes = ROOT_SECRET, **config):
        return EnclaveVM(PlatformConfig(**config), root_secret=secret)

    return make


@pytest.fixture
def make_avm(make_vm):
    """AVMs over in-process EVMs, closed at the end of the test."""
    from vsgx.host import Avm

    made = []

    def make(vm=None, **config):
        avm = Avm(vm if vm is not None else make_vm(**config))
        made.append(avm)
        return avm

    yield make
    for avm in made:
        avm.close()


@pytest.fixture
def plain(plain_enclave, make_avm):
    """The plain test enclave loaded in a fresh in-process EVM."""
    from vsgx.host import Enclave

    from plain_ops import PlainEnclave

    enclave = Enclave.load(plain_enclave.signed, evm=make_avm())
    yield PlainEnclave(enclave)
    enclave.destroy()
