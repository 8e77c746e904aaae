"""Enclave image formats: the plan both the signer and the loader use."""

from __future__ import annotations

import datetime
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from vsgx.arch import PageType, SgxError, Tcs
from vsgx.arch.pageinfo import Secinfo
from vsgx.crypto import check_sigstruct, load_private_key
from vsgx.errors import ImageError, SignatureError
from vsgx.image import catsig, gendata, parse_config, plan_from_bytes, read_elf, sign_enclave
from vsgx.image.sdk import metadata_copies, sdk_plan
from vsgx.image.sdk_metadata import LayoutGroup
from vsgx.samples import HELLO_DIR


def test_plain_enclave_plan_matches_its_signature(plain_enclave):
    plan = plan_from_bytes(plain_enclave.unsigned.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    assert plan.format == "plain-elf"
    assert plan.measure() == plan.sigstruct.enclavehash
    assert check_sigstruct(plan.sigstruct_bytes) is SgxError.SUCCESS
    assert len(plan.tcs_offsets) == 4 and plan.tcs_offsets[0] == 0
    assert plan.runs[0].secinfo_flags == Secinfo.of(PageType.TCS).flags
    heap = plan.runs[-1]
    assert heap.label == "heap" and heap.count == 16 and not heap.measured
    assert plan.ecreate.ssaframesize == 1
    assert plan.ecreate.size & (plan.ecreate.size - 1) == 0
    assert plan.sigstruct.isvprodid == 7 and plan.sigstruct.isvsvn == 3


def test_plain_enclave_zero_tail_is_measured(plain_enclave):
    elf = read_elf(plain_enclave.unsigned.read_bytes())
    data_segment = elf.segments[-1]
    assert data_segment.memsz > data_segment.filesz  # the .bss tail
    plan = plan_from_bytes(plain_enclave.unsigned.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    tail_end = (data_segment.vaddr + data_segment.memsz + 4095) & ~4095
    covered = [r for r in plan.runs if r.offset < tail_end <= r.end and r.measured]
    assert covered


def test_sdk_enclave_metadata_and_layout(sdk_enclave):
    data = sdk_enclave.signed.read_bytes()
    copies = metadata_copies(read_elf(data))
    assert [c.version_text for c in copies] == ["1.4"]
    plan = sdk_plan(read_elf(data))
    assert plan.measure() == plan.sigstruct.enclavehash
    assert check_sigstruct(plan.sigstruct_bytes) is SgxError.SUCCESS
    assert len(plan.tcs_offsets) == 4  # one thread context, replayed by a group
    assert any(isinstance(e, LayoutGroup) and e.load_times == 3 for e in copies[0].layout)
    assert plan.details["tcs_policy"] == "unbind"
    elf = read_elf(data)
    for offset in plan.tcs_offsets:
        run = next(r for r in plan.runs if r.offset == offset)
        tcs = Tcs.unpack(run.page(0))
        assert tcs.oentry == elf.symbols["enclave_entry"]
        assert tcs.nssa == 2
        assert tcs.ossa == offset + 4096  # the SSA follows its TCS
        assert tcs.ofsbase == tcs.ogsbase and tcs.ofsbase > offset
    stacks = [r for r in plan.runs if r.label == "STACK_MIN"]
    assert len(stacks) == 4 and all(r.fill == 0xCCCCCCCC and r.measured for r in stacks)
    heap = [r for r in plan.runs if r.label == "HEAP_MIN"]
    assert heap and not heap[0].measured


def test_sdk_patch_table_writes_global_data_and_clears_section_headers(sdk_enclave):
    data = sdk_enclave.signed.read_bytes()
    plan = sdk_plan(read_elf(data))
    first = plan.runs[0]
    header = first.page(0)
    assert struct.unpack_from("<Q", header, 0x28)[0] == 0  # e_shoff zeroed in the measured image
    assert struct.unpack_from("<Q", data, 0x28)[0] != 0  # ... but not in the file
    symbol = plan.entry_symbols["g_vsgx_global_data"]
    page = next(r for r in plan.runs if r.offset <= symbol < r.end)
    block = page.page((symbol - page.offset) // 4096)[symbol % 4096:symbol % 4096 + 8]
    assert block == b"VSGXGD01"


def test_one_byte_change_in_a_measured_page_breaks_the_match(sdk_enclave):
    data = bytearray(sdk_enclave.signed.read_bytes())
    elf = read_elf(bytes(data))
    text = elf.segments[0]
    data[text.offset + 0x200] ^= 0xFF
    plan = plan_from_bytes(bytes(data))
    assert plan.measure() != plan.sigstruct.enclavehash


def test_signing_twice_needs_resign(sdk_enclave, signing_key):
    config = parse_config((HELLO_DIR / "hello.toml").read_text())
    with pytest.raises(ImageError, match="already signed"):
        sign_enclave(sdk_enclave.signed.read_bytes(), config, load_private_key(signing_key))
    again = sign_enclave(sdk_enclave.signed.read_bytes(), config, load_private_key(signing_key),
                         resign=True)
    assert again.mrenclave == plan_from_bytes(sdk_enclave.signed.read_bytes()).measure()


@pytest.mark.parametrize("which", ["sdk", "plain"])
def test_gendata_then_catsig_equals_one_step_signing(which, sdk_enclave, plain_enclave,
                                                      signing_key):
    key = load_private_key(signing_key)
    if which == "sdk":
        data = sdk_enclave.unsigned.read_bytes()
        config = parse_config((HELLO_DIR / "hello.toml").read_text())
    else:
        data = plain_enclave.unsigned.read_bytes()
        config = parse_config("[enclave]\nheap_pages = 3\n")
    day = datetime.date(2026, 1, 2)
    to_sign = gendata(data, config, date=day)
    signature = key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
    attached = catsig(data, config, key.public_key(), to_sign, signature)
    direct = sign_enclave(data, config, key, date=day)
    assert attached.data == direct.data
    assert attached.sigstruct.date == 0x20260102
    other = parse_config("[enclave]\nisvsvn = 9\n")
    with pytest.raises(SignatureError, match="does not match"):
        catsig(data, other, key.public_key(), to_sign, signature)


def test_layout_with_a_group_that_replays_too_much_is_refused(sdk_enclave):
    data = bytearray(sdk_enclave.signed.read_bytes())
    copy = metadata_copies(read_elf(bytes(data)))[0]
    elf = read_elf(bytes(data))
    note = elf.sections[".note.sgxmeta"]
    base = note.offset + 25
    layout_dir = struct.unpack_from("<II", copy.raw, 0x758)
    for index in range(layout_dir[1] // 32):
        entry_at = base + layout_dir[0] + 32 * index
        if struct.unpack_from("<H", data, entry_at)[0] & 0x1000:
            struct.pack_into("<H", data, entry_at + 2, 200)  # entry_count
    with pytest.raises(ImageError, match="group"):
        plan_from_bytes(bytes(data))
