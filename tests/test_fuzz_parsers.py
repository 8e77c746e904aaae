"""A short fuzz run of every parser that takes outside input: ELF images,
SDK metadata, SIGSTRUCT, signing config. Only clean errors are allowed."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsgx.crypto import check_sigstruct
from vsgx.crypto.sigstruct import parse_sigstruct
from vsgx.errors import VsgxError
from vsgx.image import parse_config, plan_from_bytes, read_elf

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def mutations(data: bytes, hot: list[tuple[int, int]]):
    """Byte edits, mostly inside the regions a parser reads (headers, metadata)."""
    region = st.sampled_from(hot).flatmap(lambda r: st.integers(r[0], max(r[0], r[1] - 1)))
    position = st.one_of(region, st.integers(0, len(data) - 1))
    edit = st.tuples(position, st.integers(0, 255), st.integers(1, 8))
    return st.lists(edit, min_size=1, max_size=6).map(lambda edits: _apply(data, edits))


def _apply(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, value, length in edits:
        out[pos:pos + length] = bytes([value]) * min(length, len(out) - pos)
    return bytes(out)


def _hot_regions(data: bytes) -> list[tuple[int, int]]:
    regions = [(0, 64), (64, 64 + 56 * 4)]
    elf = read_elf(data)
    shoff = int.from_bytes(data[0x28:0x30], "little")
    regions.append((shoff, min(len(data), shoff + 64 * 16)))
    note = elf.sections.get(".note.sgxmeta")
    if note is not None:
        regions.append((note.offset, note.offset + 0x800))
        regions.append((note.offset + 0x760, note.offset + 0x1000))
    return regions


def _plan_or_clean_error(data: bytes, sigstruct: bytes | None = None) -> None:
    try:
        plan = plan_from_bytes(data, sigstruct)
        plan.measure()
    except VsgxError:
        pass


def test_fuzz_sdk_enclave_images(sdk_enclave):
    original = sdk_enclave.signed.read_bytes()

    @FUZZ
    @given(mutations(original, _hot_regions(original)))
    def check(data):
        _plan_or_clean_error(data)

    check()


def test_fuzz_plain_enclave_images_and_sidecar(plain_enclave):
    original = plain_enclave.unsigned.read_bytes()
    sig = plain_enclave.sigstruct.read_bytes()

    @FUZZ
    @given(mutations(original, _hot_regions(original)),
           st.one_of(st.just(sig), mutations(sig, [(0, 1808)]), st.binary(max_size=2000)))
    def check(data, sidecar):
        _plan_or_clean_error(data, sidecar)

    check()


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes_as_enclave(data):
    _plan_or_clean_error(data)
    _plan_or_clean_error(b"\x7fELF\x02\x01\x01" + data)


@FUZZ
@given(st.binary(min_size=0, max_size=2000))
def test_fuzz_sigstruct(data):
    try:
        parse_sigstruct(data)
    except VsgxError:
        pass
    check_sigstruct(data[:1808].ljust(1808, b"\0"))


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_config_text(text):
    try:
        parse_config(text)
    except VsgxError:
        pass


@pytest.mark.parametrize("text", ["[enclave]\ndebug = 1\n", "[enclave]\nisvsvn = 70000\n",
                                  "[other]\n", "enclave = 3\n", "[enclave]\nheap_size = 'x'\n",
                                  "[enclave]\nstack_size = 100\n", "[enclave]\nbogus = 1\n"])
def test_config_errors_name_the_problem(text):
    with pytest.raises(VsgxError, match=r"c\.toml"):
        parse_config(text, "c.toml")


def test_config_accepts_hex_strings():
    assert parse_config("[enclave]\nheap_size = '0x2000'\n").heap_size == 0x2000
