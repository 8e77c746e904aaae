"""`vsgx exec`: unmodified programs, written here in C and built by gcc,
run their enclaves through the injected library — a selftest-style loader
over the uapi ioctls and the vDSO, and a host that follows Intel's urts
conventions for the SDK-format sample — on both executors; the generated
protocol header agrees with its Python declarations; bad input gets a
one-line error."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vsgx.avm.loader import secs_for
from vsgx.channel.device import MESSAGES, render_c_header
from vsgx.image import plan_from_bytes
from vsgx.samples import HELLO_DIR
from vsgx.sdk.edl import load_edl
from vsgx.sdk.features import system_features

PROGRAMS = Path(__file__).resolve().parent / "native_programs"
EXEC_TIMEOUT = 600
pytestmark = pytest.mark.skipif(sys.platform != "linux" or shutil.which("gcc") is None,
                                reason="vsgx exec needs Linux and gcc")


def _native_usable() -> tuple[bool, str]:
    from vsgx.evm.native_executor import native_support

    return native_support()


native_only = pytest.mark.skipif(not _native_usable()[0],
                                 reason=f"the native executor: {_native_usable()[1]}")


def compile_program(source: Path, output: Path) -> Path:
    result = subprocess.run(["gcc", "-O1", "-Wall", "-pthread", "-o", str(output), str(source)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return output


def vsgx_exec(*words: str, executor: str | None = None, cwd: Path | None = None,
              timeout: float = EXEC_TIMEOUT, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vsgx", "exec"]
    if executor:
        command += ["--executor", executor]
    return subprocess.run([*command, *words], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, check=False, env=env)


def checks(output: str) -> dict[str, str]:
    """The "ok NAME" / "FAIL NAME: why" lines of a test program."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"(ok|FAIL) ([^:]+?)(?:: (.*))?$", line)
        if match:
            found[match.group(2)] = match.group(1) if match.group(1) == "ok" else line
    return found


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("programs")
    return {name: compile_program(PROGRAMS / f"{name}.c", out / name)
            for name in ("uapi_loader", "urts_host")}


# -- the generated protocol header --------------------------------------------
def test_protocol_header_matches_the_python_declarations(tmp_path: Path) -> None:
    header = tmp_path / "vsgx_device_protocol.h"
    header.write_text(render_c_header())
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "vsgx_device_protocol.h"',
             "int main(void) {"]
    for message in MESSAGES.values():
        lines.append(f'printf("{message.c_name} size %zu\\n", sizeof(struct {message.c_name}));')
        for field in message.all_fields:
            lines.append(f'printf("{message.c_name} {field.name} %zu\\n", '
                         f'offsetof(struct {message.c_name}, {field.name}));')
    lines += ["return 0; }"]
    source = tmp_path / "layout.c"
    source.write_text("\n".join(lines))
    binary = tmp_path / "layout"
    result = subprocess.run(["gcc", f"-I{tmp_path}", "-o", str(binary), str(source)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    seen = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    expected = []
    for message in MESSAGES.values():
        expected.append(f"{message.c_name} size {message.layout.size}")
        expected += [f"{message.c_name} {name} {offset}"
                     for name, offset in message.offsets().items()]
    assert seen.split("\n")[:-1] == expected


# -- a loader in the selftests' style over the uapi --------------------------
def test_uapi_loader_runs_the_plain_enclave(programs, plain_enclave, executor) -> None:
    assert plain_enclave.sigstruct is not None
    result = vsgx_exec("--", str(programs["uapi_loader"]), str(plain_enclave.signed),
                       str(plain_enclave.sigstruct), executor=executor)
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    plan = plan_from_bytes(plain_enclave.signed.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    image_end = max(run.end for run in plan.runs)
    wanted = {"cpuid sgx", "cpuid sgx1 sgx2", "cpuid epc section", "probes", "create",
              "add heap", "init", "init wrong measurement",
              "map above the pages' rights", "mprotect above the pages' rights",
              "zeroed restrict probe", "vdso symbol", "put and get", "user handler",
              "pages read afresh", "kept page made read-only", "kept page made writable",
              "slot taken for a gone page", "exception", "pte fault", "eresume", "threads",
              "raw enclu", "raw enclu aex", "program's own sigill", "after close",
              "after munmap"}
    if plan.ecreate.size - image_end >= 4096:
        wanted |= {"unmapped hole", "eaug on a mapped hole", "eaccept", "augmented page",
                   "hole unmapped and mapped again"}
    assert wanted <= set(found), result.stdout


# -- a host that follows Intel's urts ----------------------------------------
def write_plan(signed: Path, output: Path) -> Path:
    """The sample's build plan as urts_host reads it (the layout Intel's
    urts derives from the same metadata)."""
    plan = plan_from_bytes(signed.read_bytes())
    secs = secs_for(plan, 0, 0x3, 0x1, debug=True)
    assert plan.sigstruct_bytes is not None
    tcs = plan.tcs_offsets
    features = system_features(len(tcs))
    runs = plan.runs
    header_size = 8 + 12 * 8
    runs_at = header_size
    tcs_at = runs_at + len(runs) * 48
    data = bytearray()
    data_at = tcs_at + len(tcs) * 8
    run_records = []
    for run in runs:
        if run.data is None:
            run_records.append((run.offset, run.count, run.secinfo_flags, int(run.measured),
                                (1 << 64) - 1, run.fill))
        else:
            run_records.append((run.offset, run.count, run.secinfo_flags, int(run.measured),
                                data_at + len(data), 0))
            data += run.data
    sigstruct_at = data_at + len(data)
    features_at = sigstruct_at + len(plan.sigstruct_bytes)
    blob = bytearray(b"VSGXPLN1")
    blob += struct.pack("<12Q", secs.size, secs.ssaframesize, secs.attributes, secs.xfrm,
                        secs.miscselect, len(runs), len(tcs), runs_at, tcs_at, sigstruct_at,
                        features_at, len(features))
    for record in run_records:
        blob += struct.pack("<6Q", *record)
    blob += struct.pack(f"<{len(tcs)}Q", *tcs)
    blob += data + plan.sigstruct_bytes + features
    output.write_bytes(bytes(blob))
    return output


def test_urts_style_host_runs_the_sdk_sample(programs, sdk_enclave, executor, tmp_path) -> None:
    plan_file = write_plan(sdk_enclave.signed, tmp_path / "hello.plan")
    edl = load_edl(HELLO_DIR / "hello.edl")
    ordinals = [str(edl.ecall(name)[0]) for name in ("ecall_hello", "ecall_add",
                                                     "ecall_ocall_nop", "ecall_fault")]
    ordinals += [str(edl.ocall(name)[0]) for name in ("ocall_print", "ocall_nop")]
    result = vsgx_exec("--", str(programs["urts_host"]), str(plan_file), *ordinals,
                       executor=executor)
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"vdso symbol", "load", "ecall", "map above the pages' rights", "map outside ELRANGE",
            "map again with the pages' rights", "ocalls", "ocall with a string",
            "kept page unmapped", "kept page truncated", "exception 1",
            "exception 2", "exception 3", "two threads", "fork", "parent after fork",
            "destroyed", "exit without destroy"} <= set(found), result.stdout


FAST_STATS = re.compile(r"fast path: (\d+) entries, (\d+) handed over, (\d+) refused, "
                        r"(\d+) TCS attached[^\n]*")


def run_urts_host(programs, sdk_enclave, tmp_path, env_extra: dict[str, str],
                  options: tuple[str, ...] = ()
                  ) -> tuple[subprocess.CompletedProcess[str], list[tuple[int, ...]]]:
    plan_file = write_plan(sdk_enclave.signed, tmp_path / "hello.plan")
    edl = load_edl(HELLO_DIR / "hello.edl")
    ordinals = [str(edl.ecall(name)[0]) for name in ("ecall_hello", "ecall_add",
                                                     "ecall_ocall_nop", "ecall_fault")]
    ordinals += [str(edl.ocall(name)[0]) for name in ("ocall_print", "ocall_nop")]
    env = {**os.environ, "VSGX_EXEC_FAST_STATS": "1", **env_extra}
    result = vsgx_exec(*options, "--", str(programs["urts_host"]), str(plan_file), *ordinals,
                       executor="native", env=env)
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"ecall", "ocalls", "ocall with a string", "exception 1", "exception 2",
            "exception 3", "two threads", "fork", "destroyed"} <= set(found), result.stdout
    stats = [tuple(map(int, m.groups())) for m in FAST_STATS.finditer(result.stderr)]
    return result, stats


@native_only
def test_urts_host_entries_go_through_the_fast_path(programs, sdk_enclave, tmp_path) -> None:
    """ECALLs, OCALLs (EEXIT, then EENTER back with the return) and
    exceptions of an unmodified program, its entries straight to the
    runner: the same results, most entries fast, the rest handed over to
    the EVM (the exceptions) or refused (before the EVM's first grant)."""
    result, stats = run_urts_host(programs, sdk_enclave, tmp_path, {})
    assert stats, result.stderr
    entries, handed_over, _, attached = stats[0]  # the parent's (the child leaves by _exit)
    assert attached >= 1, result.stderr
    assert entries >= 10, result.stderr
    assert handed_over >= 1, result.stderr  # the exceptions went on in the EVM


@native_only
def test_urts_host_with_fast_exits_gets_the_same_results(programs, sdk_enclave,
                                                         tmp_path) -> None:
    """--fast-exits: the private EVM rewrites the sample's EEXIT sites into
    INT3 after EINIT; the program sees the same results, through the fast
    path (the runner takes the INT3 at a site as the EEXIT)."""
    result, stats = run_urts_host(programs, sdk_enclave, tmp_path, {}, ("--fast-exits",))
    assert stats, result.stderr
    entries, handed_over, _, attached = stats[0]
    assert attached >= 1 and entries >= 10, result.stderr
    assert handed_over >= 1, result.stderr  # the exceptions still go on in the EVM


@native_only
@pytest.mark.parametrize("off", ["library", "evm"])
def test_urts_host_without_the_fast_path_enters_through_the_launcher(
        programs, sdk_enclave, tmp_path, off) -> None:
    """The fast path off in the library (VSGX_EXEC_FAST=0), or refused by
    the EVM (VSGX_FAST_PATH=0: no files to hand out): every entry goes
    through the launcher, with the same results."""
    env = {"VSGX_EXEC_FAST": "0"} if off == "library" else {"VSGX_FAST_PATH": "0"}
    result, stats = run_urts_host(programs, sdk_enclave, tmp_path, env)
    assert stats, result.stderr
    assert all(s[0] == 0 and s[3] == 0 for s in stats), result.stderr


# -- CPUID sites ----------------------------------------------------------------
def test_cpuid_sites_are_real_instruction_starts(tmp_path: Path) -> None:
    from vsgx.native.cpuid_sites import FileIdentity, cpuid_sites

    source = tmp_path / "cpuid.c"
    # The immediate of the first mov holds the bytes 0f a2: not a CPUID.
    source.write_text("""
        int main(void) {
            unsigned a, b, c, d;
            __asm__ volatile("mov $0x00a20f00, %%eax" : "=a"(a));
            __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
            return (int)(a + b + c + d);
        }""")
    binary = compile_program(source, tmp_path / "cpuid")
    from elftools.elf.elffile import ELFFile

    with binary.open("rb") as handle:
        elf = ELFFile(handle)
        segments = [(s["p_vaddr"], s["p_memsz"]) for s in elf.iter_segments()
                    if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1]
        text = elf.get_section_by_name(".text")
        code, start = text.data(), text["sh_addr"]
    sites = cpuid_sites(str(binary), FileIdentity.of(str(binary)), segments)
    decoy = code.index(b"\x0f\xa2")  # inside the mov's immediate comes first
    assert start + decoy not in sites
    assert len(sites) == 1 and code[sites[0] - start:sites[0] - start + 2] == b"\x0f\xa2"


def test_cpuid_sites_refuse_a_changed_file(tmp_path: Path) -> None:
    from vsgx.native.cpuid_sites import CpuidSitesError, FileIdentity, cpuid_sites

    binary = compile_program(PROGRAMS / "uapi_loader.c", tmp_path / "loader")
    identity = FileIdentity.of(str(binary))
    stale = FileIdentity(identity.dev, identity.ino, identity.size + 1, identity.mtime_ns)
    with pytest.raises(CpuidSitesError, match="changed on disk"):
        cpuid_sites(str(binary), stale, [(0, 1 << 30)])


# -- the command line -----------------------------------------------------------
def test_exec_without_a_program_is_an_error() -> None:
    result = vsgx_exec()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("vsgx exec: error: no program")


def test_exec_of_a_missing_program_is_an_error(tmp_path: Path) -> None:
    result = vsgx_exec("--", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "no such file" in result.stderr
    result = vsgx_exec("--", "vsgx-no-such-program")
    assert result.returncode == 1 and "not found in PATH" in result.stderr
    plain = tmp_path / "data.txt"
    plain.write_text("not a program")
    result = vsgx_exec("--", str(plain))
    assert result.returncode == 1 and "not an executable file" in result.stderr


def test_exec_with_a_bad_evm_address_is_an_error() -> None:
    result = vsgx_exec("--evm", "bogus", "--", "true")
    assert result.returncode == 1
    assert "--evm bogus" in result.stderr
    result = vsgx_exec("--evm", "unix:/nonexistent/evm.sock", "--", "true")
    assert result.returncode == 1
    assert "cannot reach the EVM" in result.stderr
    result = vsgx_exec("--evm", "unix:/x", "--executor", "native", "--", "true")
    assert result.returncode == 1 and "--executor" in result.stderr


def test_exec_passes_the_exit_status_and_the_environment_through() -> None:
    result = vsgx_exec("--", "sh", "-c", 'test -n "$LD_PRELOAD" && exit 7', executor="unicorn")
    assert result.returncode == 7, result.stderr
    result = vsgx_exec("--", "sh", "-c", "kill -TERM $$", executor="unicorn")
    assert result.returncode == 128 + 15, result.stderr


def test_print_env_names_the_library_and_the_launcher() -> None:
    result = vsgx_exec("--print-env")
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    library = values["LD_PRELOAD"].strip("'")
    assert os.path.isfile(library) and "libvsgx-exec" in library
    assert "exec --attach" in values["VSGX_EXEC_SPAWN"]


# -- the uapi semantics, in this process ----------------------------------------
@pytest.fixture
def enclave_file(plain_enclave, make_vm):
    """The plain enclave created, added and initialised through
    vsgx.avm.uapi as the ioctls would, over an in-process EVM."""
    from vsgx.avm.uapi import (
        SGX_IOC_ENCLAVE_CREATE,
        SGX_IOC_ENCLAVE_INIT,
        EnclaveFile,
        ProgramDriver,
    )

    assert plain_enclave.sigstruct is not None
    plan = plan_from_bytes(plain_enclave.signed.read_bytes(),
                           plain_enclave.sigstruct.read_bytes())
    driver = ProgramDriver(make_vm())
    file = EnclaveFile(driver)
    base = plan.ecreate.size * 64
    secs = secs_for(plan, base, 0x3, 0x1, debug=True)
    assert file.ioctl(SGX_IOC_ENCLAVE_CREATE, [0], secs.pack()).ret == 0
    for run in plan.runs:
        secinfo = run.secinfo_flags.to_bytes(8, "little") + bytes(56)
        pages = [run.page(i) for i in range(run.count)]
        result = file.add_pages([0, run.offset, run.size, 0, int(run.measured), 0], secinfo, 0,
                                pages)
        assert result.ret == 0 and result.arg is not None and result.arg[5] == run.size
    assert file.ioctl(SGX_IOC_ENCLAVE_INIT, [0], plan.sigstruct_bytes).ret == 0
    yield file, plan, base
    file.release()


def test_uapi_zeroed_probes_are_answered_as_the_kernel_answers(enclave_file) -> None:
    import errno

    from vsgx.avm.uapi import (
        SGX_IOC_ENCLAVE_CREATE,
        SGX_IOC_ENCLAVE_MODIFY_TYPES,
        SGX_IOC_ENCLAVE_PROVISION,
        SGX_IOC_ENCLAVE_REMOVE_PAGES,
        SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS,
        SGX_IOC_VEPC_REMOVE_ALL,
    )

    file, _, _ = enclave_file
    assert file.ioctl(SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, [0] * 5).ret == -errno.EINVAL
    assert file.ioctl(SGX_IOC_ENCLAVE_MODIFY_TYPES, [0] * 5).ret == -errno.EINVAL
    assert file.ioctl(SGX_IOC_ENCLAVE_REMOVE_PAGES, [0] * 3).ret == -errno.EINVAL
    assert file.ioctl(SGX_IOC_ENCLAVE_PROVISION, [0]).ret == -errno.EINVAL  # fd 0 is not one
    assert file.ioctl(SGX_IOC_ENCLAVE_CREATE, [0], bytes(4096)).ret == -errno.EINVAL  # twice
    assert file.ioctl(SGX_IOC_VEPC_REMOVE_ALL, None).ret == -errno.ENOTTY
    assert file.ioctl(SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, None).ret == -errno.EFAULT


def test_uapi_counts_are_written_back_where_the_loop_stopped(enclave_file) -> None:
    import errno

    from vsgx.avm.uapi import SGX_IOC_ENCLAVE_MODIFY_TYPES, SGX_IOC_ENCLAVE_REMOVE_PAGES

    file, plan, _ = enclave_file
    heap = plan.runs[-1]
    # Two heap pages become TRIM: count is the bytes done.
    result = file.ioctl(SGX_IOC_ENCLAVE_MODIFY_TYPES, [heap.offset, 2 * 4096, 4, 0, 0])
    assert result.ret == 0 and result.arg == [heap.offset, 2 * 4096, 4, 0, 2 * 4096]
    # Not EACCEPTed yet: EPERM, nothing removed.
    result = file.ioctl(SGX_IOC_ENCLAVE_REMOVE_PAGES, [heap.offset, 4096, 0])
    assert result.ret == -errno.EPERM and result.arg == [heap.offset, 4096, 0]
    # A page type other than TCS or TRIM is refused before the loop.
    result = file.ioctl(SGX_IOC_ENCLAVE_MODIFY_TYPES, [heap.offset, 4096, 2, 0, 0])
    assert result.ret == -errno.EINVAL and result.arg is not None and result.arg[4] == 0
    # The loop stops at the first page that is not there: EFAULT, count so far.
    end = heap.offset + heap.size
    result = file.ioctl(SGX_IOC_ENCLAVE_MODIFY_TYPES, [end - 4096, 2 * 4096, 4, 0, 0])
    assert result.ret == -errno.EFAULT and result.arg is not None and result.arg[4] == 4096


def test_uapi_add_pages_stops_at_an_unreadable_source_page(plain_enclave, make_vm) -> None:
    import errno

    from vsgx.arch.secs import Secs
    from vsgx.avm.uapi import SGX_IOC_ENCLAVE_CREATE, EnclaveFile, ProgramDriver

    file = EnclaveFile(ProgramDriver(make_vm()))
    secs = Secs(size=1 << 20, baseaddr=1 << 40, ssaframesize=1, attributes=0x6, xfrm=3)
    assert file.ioctl(SGX_IOC_ENCLAVE_CREATE, [0], secs.pack()).ret == 0
    secinfo = (0x203).to_bytes(8, "little") + bytes(56)
    arg = [0, 0, 3 * 4096, 0, 0, 0]
    result = file.add_pages(arg, secinfo, 0, [bytes(4096), None])
    assert result.ret == -errno.EFAULT and result.arg is not None and result.arg[5] == 4096
    result = file.add_pages(arg, secinfo, 0, [bytes(4096)])  # the same page again
    assert result.ret == -errno.EBUSY and result.arg is not None and result.arg[5] == 0
    bad = (0x202).to_bytes(8, "little") + bytes(56)  # W without R
    assert file.add_pages(arg, bad, 0, [bytes(4096)]).ret == -errno.EINVAL
    assert file.add_pages([8, 0, 4096, 0, 0, 0], secinfo, 0, []).ret == -errno.EINVAL
    file.release()


def test_uapi_mappings_follow_the_pages_rights(enclave_file) -> None:
    import errno

    from vsgx.avm.uapi import PROT_EXEC, PROT_READ, PROT_WRITE

    file, plan, base = enclave_file
    text = plan.runs[1]  # R+X
    assert file.map(base + text.offset, text.size, PROT_READ | PROT_EXEC) == 0
    assert file.mprotect(base + text.offset, 4096, PROT_READ | PROT_WRITE) == -errno.EACCES
    assert file.map(base - 4096, 4096, PROT_READ) == -errno.EACCES  # outside, initialised
    hole = base + plan.ecreate.size - 4096
    assert not file.mapped(hole)
    assert file.map(hole, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) == 0  # no page: any rights
    assert file.mapped(hole)
    assert file.unmap(hole, 4096) == 0 and not file.mapped(hole)


# -- ADD_PAGES answered in the program ------------------------------------------
def test_add_pages_errors_come_back_from_the_ioctl_as_the_kernel_returns_them(tmp_path) -> None:
    """Every check of sgx_ioc_enclave_add_pages (state, argument, source
    alignment, offset and length, SECINFO, already added, source readable,
    the count written back) answers the ioctl itself, though the pages go
    to the EVM later; what only the EVM refuses comes back from INIT."""
    program = compile_program(PROGRAMS / "add_pages.c", tmp_path / "add_pages")
    result = vsgx_exec("--", str(program), executor="unicorn")
    found = checks(result.stdout)
    failed = [line for line in found.values() if line != "ok"]
    assert not failed, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"add before create", "add with an unreadable argument", "add a misaligned source",
            "add past ELRANGE", "add a range that wraps", "add with an unreadable secinfo",
            "add a VA page", "add with a reserved flag (bit 63)",
            "add with a reserved secinfo byte", "add a page twice",
            "add stops at an added page", "add stops at an unreadable source page",
            "add from the stack", "add with an argument it cannot write back",
            "add a page twice after a flush", "map above a queued page's rights",
            "init answers for the queued pages", "adds after it fail with it"} <= set(found)


def _created(make_vm, batch: bool = True):
    """An EnclaveFile with a 4 MiB enclave created (its EVM without the
    batch leaves when ``batch`` is False, as over a version-2 channel)."""
    from vsgx.arch.secs import Secs
    from vsgx.avm.uapi import SGX_IOC_ENCLAVE_CREATE, EnclaveFile, ProgramDriver

    vm = make_vm()

    class SingleLeaves:
        batch_leaves = False

        def __getattr__(self, name):
            return getattr(vm, name)

    file = EnclaveFile(ProgramDriver(vm if batch else SingleLeaves()))
    secs = Secs(size=4 << 20, baseaddr=1 << 40, ssaframesize=1, attributes=0x6, xfrm=3)
    assert file.ioctl(SGX_IOC_ENCLAVE_CREATE, [0], secs.pack()).ret == 0
    return file, vm


REG_RW = (0x203).to_bytes(8, "little") + bytes(56)
REG_R = (0x201).to_bytes(8, "little") + bytes(56)
TCS = (0x100).to_bytes(8, "little") + bytes(56)


@pytest.mark.parametrize("batch", [True, False], ids=["eadd_runs", "single leaves"])
def test_uapi_add_runs_count_the_pages_before_the_run_that_failed(make_vm, batch) -> None:
    import errno

    from vsgx.avm.uapi import AddRun

    file, vm = _created(make_vm, batch)
    data = bytes(range(256)) * 16  # one page
    done = file.add_runs([AddRun(0, 2, REG_RW, True, data * 2),
                          AddRun(2 * 4096, 300, REG_R, False, fill=0)])
    assert done == (0, 302)
    encl = file.encl
    assert encl is not None
    if batch:  # a long uniform run waits, deferred, for its first touch, but its two ends
        from vsgx.avm.driver import UNIFORM_RESIDENT

        assert len(encl.deferred) == 300 - UNIFORM_RESIDENT
        first, last = encl.base + 2 * 4096, encl.base + 301 * 4096
        ends = UNIFORM_RESIDENT // 2
        assert all(first + n * 4096 in encl.pages for n in range(ends))
        assert all(last - n * 4096 in encl.pages for n in range(ends))
        assert encl.deferred.get(first + ends * 4096) is not None
        assert encl.deferred.get(last - ends * 4096) is not None
    # An overlap inside the batch: EBUSY, the runs before it added.
    status, added = file.add_runs([AddRun(400 * 4096, 1, REG_RW, False, data),
                                   AddRun(401 * 4096, 2, REG_RW, False, fill=7),
                                   AddRun(402 * 4096, 1, REG_RW, False, data)])
    assert (status, added) == (-errno.EBUSY, 3)
    # A SECINFO the kernel refuses: EINVAL before that run.
    status, added = file.add_runs([AddRun(500 * 4096, 1, REG_RW, False, data),
                                   AddRun(501 * 4096, 1, (0x202).to_bytes(8, "little")
                                          + bytes(56), False, data)])
    assert (status, added) == (-errno.EINVAL, 1)
    # A TCS page EADD refuses (reserved TCS.FLAGS bits): EIO from the EVM,
    # the runs before it added, it not.
    bad_tcs = bytes(8) + b"\xff" * 8 + bytes(4096 - 16)
    status, added = file.add_runs([AddRun(600 * 4096, 1, REG_RW, False, data),
                                   AddRun(601 * 4096, 1, TCS, True, bad_tcs),
                                   AddRun(602 * 4096, 1, REG_RW, False, data)])
    assert (status, added) == (-errno.EIO, 1)
    assert (1 << 40) + 601 * 4096 not in encl.pages
    state = vm.enclave(encl.secs_page)
    assert len(state.pages) + len(state.deferred) == 302 + 3 + 1 + 1
    file.release()


def test_uapi_may_map_checks_the_rights_of_deferred_pages(make_vm) -> None:
    import errno

    from vsgx.avm.uapi import PROT_READ, PROT_WRITE, AddRun

    file, _ = _created(make_vm)
    assert file.add_runs([AddRun(0, 300, REG_R, False, fill=0)]) == (0, 300)
    encl = file.encl
    assert encl is not None and encl.deferred.get(encl.base + 150 * 4096) is not None
    assert file.map(encl.base + 150 * 4096, 4096, PROT_READ | PROT_WRITE) == -errno.EACCES
    assert file.map(encl.base + 150 * 4096, 4096, PROT_READ) == 0
    file.release()
