"""The C side declares SGX structures too — the sample runtime
(src/vsgx/samples/rt: GPRSGX in rt_internal.h, whose SSA_URSP/SSA_URBP
rt_entry.S uses; SECINFO, KEYREQUEST, REPORT, TARGETINFO in enclu.h) and
the plain test enclave (tests/enclaves/plain: TCS, GPRSGX, EXINFO in encl.h;
the TCS pages bootstrap.S lays out). A tiny C program includes their
headers and prints offsetof/sizeof and the constants; they must equal
vsgx.arch's tables, so C and Python cannot drift apart."""

from __future__ import annotations

import subprocess

import pytest

from vsgx.arch import (
    Enclu,
    Exinfo,
    Gprsgx,
    KeyName,
    KeyPolicy,
    Keyrequest,
    PageType,
    Report,
    Secinfo,
    SecinfoFlags,
    Targetinfo,
    Tcs,
)
from vsgx.arch.constants import SECINFO_PAGE_TYPE_SHIFT
from vsgx.arch.layout import field_offset
from vsgx.arch.report import REPORT_BODY_SIZE
from vsgx.samples import RUNTIME_DIR

from conftest import PLAIN_DIR

# (C struct, the vsgx.arch structure, {C member: arch field}) — a member
# named as its field when the map does not say otherwise.
GPRS = [*Gprsgx.__dataclass_fields__]
STRUCTS = [
    ("struct ssa_gpr", Gprsgx, {name: name for name in GPRS}),
    ("struct gprsgx", Gprsgx, {name: name for name in GPRS}),
    ("struct exinfo", Exinfo, {"maddr": "maddr", "errcd": "errcd"}),
    ("struct encl_tcs", Tcs, {name: name for name in Tcs.__dataclass_fields__}),
    ("struct sgx_secinfo", Secinfo, {"flags": "flags"}),
    ("struct sgx_keyrequest", Keyrequest, {name: name for name in
                                           Keyrequest.__dataclass_fields__}),
    ("struct sgx_report", Report, {"keyid": "keyid", "mac": "mac"}),
]
# (C constant, its value in vsgx.arch)
CONSTANTS = [
    ("SSA_URSP", field_offset(Gprsgx, "ursp")), ("SSA_URBP", field_offset(Gprsgx, "urbp")),
    ("SGX_REPORT_BODY_ATTRIBUTES", field_offset(Report, "attributes")),
    ("SGX_REPORT_BODY_MRENCLAVE", field_offset(Report, "mrenclave")),
    ("SGX_REPORT_BODY_MRSIGNER", field_offset(Report, "mrsigner")),
    ("SGX_REPORT_BODY_REPORTDATA", field_offset(Report, "reportdata")),
    ("sizeof(((struct sgx_report *)0)->body)", REPORT_BODY_SIZE),
    ("sizeof(struct sgx_targetinfo)", Targetinfo.SIZE),
    ("SGX_PAGE_R", SecinfoFlags.R), ("SGX_PAGE_W", SecinfoFlags.W),
    ("SGX_PAGE_X", SecinfoFlags.X), ("SGX_PAGE_PENDING", SecinfoFlags.PENDING),
    ("SGX_PAGE_MODIFIED", SecinfoFlags.MODIFIED), ("SGX_PAGE_PR", SecinfoFlags.PR),
    ("SGX_PT_TCS", PageType.TCS << SECINFO_PAGE_TYPE_SHIFT),
    ("SGX_PT_REG", PageType.REG << SECINFO_PAGE_TYPE_SHIFT),
    ("SGX_PT_TRIM", PageType.TRIM << SECINFO_PAGE_TYPE_SHIFT),
    ("SGX_KEYNAME_REPORT", KeyName.REPORT_KEY), ("SGX_KEYNAME_SEAL", KeyName.SEAL_KEY),
    ("SGX_KEYPOLICY_MRENCLAVE", KeyPolicy.MRENCLAVE),
    ("SGX_KEYPOLICY_MRSIGNER", KeyPolicy.MRSIGNER),
    ("ENCLU_EREPORT", Enclu.EREPORT), ("ENCLU_EGETKEY", Enclu.EGETKEY),
    ("ENCLU_EEXIT", Enclu.EEXIT), ("ENCLU_EACCEPT", Enclu.EACCEPT),
    ("ENCLU_EMODPE", Enclu.EMODPE), ("ENCLU_EACCEPTCOPY", Enclu.EACCEPTCOPY),
]


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory) -> dict[str, int]:
    """What the C compiler makes of the headers: name -> value."""
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "rt_internal.h"',
             '#include "enclu.h"', '#include "encl.h"', "int main(void) {"]

    def show(name: str, expression: str) -> None:
        lines.append(f'    printf("%s %llu\\n", "{name}", (unsigned long long)({expression}));')

    for struct, _cls, members in STRUCTS:
        show(f"{struct}.SIZE", f"sizeof({struct})")
        for member in members:
            show(f"{struct}.{member}", f"offsetof({struct}, {member})")
            show(f"{struct}.{member}.size", f"sizeof((({struct} *)0)->{member})")
    for name, _value in CONSTANTS:
        show(name, name)
    lines.append("    return 0;\n}")
    directory = tmp_path_factory.mktemp("c-layouts")
    source = directory / "layouts.c"
    source.write_text("\n".join(lines) + "\n")
    binary = directory / "layouts"
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{RUNTIME_DIR}", f"-I{PLAIN_DIR}",
                    str(source), "-o", str(binary)], check=True, capture_output=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.rsplit(" ", 1)
                                                 for line in out.splitlines())}


@pytest.mark.parametrize(("struct", "cls", "members"), STRUCTS, ids=[s[0] for s in STRUCTS])
def test_c_structures_have_the_offsets_and_sizes_of_the_arch_tables(c_layouts, struct, cls,
                                                                    members):
    for member, name in members.items():
        spec = next(f for f in cls.FIELDS if f.name == name)
        assert c_layouts[f"{struct}.{member}"] == spec.offset, (struct, member)
        assert c_layouts[f"{struct}.{member}.size"] == spec.size, (struct, member)
    size = c_layouts[f"{struct}.SIZE"]
    # REPORT and KEYREQUEST are declared aligned(512): C pads REPORT's 432 bytes.
    assert size == cls.SIZE or (cls is Report and size == 512), struct


@pytest.mark.parametrize(("name", "value"), CONSTANTS, ids=[c[0] for c in CONSTANTS])
def test_c_constants_have_the_arch_values(c_layouts, name, value):
    assert c_layouts[name] == int(value)


def test_the_tcs_pages_bootstrap_lays_out_read_as_the_arch_tcs(plain_enclave):
    """bootstrap.S writes each TCS with .quad/.long: read back through the
    arch table, its fields are where the enclave's symbols say."""
    from vsgx.image import plan_from_bytes

    plan = plan_from_bytes(plain_enclave.signed.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    tcs_runs = [run for run in plan.runs if run.secinfo_flags >> 8 == PageType.TCS]
    pages = [run.page(i) for run in tcs_runs for i in range(run.count)]
    assert len(pages) == 4
    symbols = plan.entry_symbols
    frames = 2  # ENCL_NSSA
    for index, page in enumerate(pages):
        tcs = Tcs.unpack(page)
        assert tcs.ossa == symbols["encl_ssa"] + index * frames * 4096
        assert (tcs.cssa, tcs.nssa, tcs.oentry) == (0, frames, symbols["encl_entry"])
        assert tcs.ofsbase == tcs.ogsbase == symbols["encl_tls"]
        assert (tcs.fslimit, tcs.gslimit) == (0xFFFFFFFF, 0xFFFFFFFF)
