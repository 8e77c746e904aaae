"""The Linux SGX uapi (arch/x86/include/uapi/asm/sgx.h) as the in-kernel
driver answers it (arch/x86/kernel/cpu/sgx/ioctl.c, encl.c, driver.c),
over ``SgxDriver``: the ioctls with their argument structs, their checks in
the kernel's order, the errno each returns and what is written back; and
the rules of the enclave file's mappings (mmap/mprotect above the pages'
rights is EACCES, a fault adds a page only where the program maps one).

The program's library copies the arguments in (copy_from_user) and the
results out; everything between is here. Results are 0 or ``-errno``.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from vsgx.arch.constants import PAGE_SIZE, Attribute, PageType
from vsgx.arch.einittoken import EINITTOKEN_SIZE
from vsgx.arch.errors import Fault, SgxError
from vsgx.arch.secs import SECS_SIZE, Secs
from vsgx.arch.sigstruct import SIGSTRUCT_SIZE, Sigstruct
from vsgx.avm.driver import AddRun, DriverEnclave, DriverError, Evm, SgxDriver
from vsgx.errors import StructureError

SGX_MAGIC = 0xA4


def _ioc(direction: int, number: int, size: int) -> int:
    return direction << 30 | size << 16 | SGX_MAGIC << 8 | number


_W, _RW = 1, 3  # _IOW, _IOWR
SGX_IOC_ENCLAVE_CREATE = _ioc(_W, 0x00, 8)
SGX_IOC_ENCLAVE_ADD_PAGES = _ioc(_RW, 0x01, 48)
SGX_IOC_ENCLAVE_INIT = _ioc(_W, 0x02, 8)
SGX_IOC_ENCLAVE_PROVISION = _ioc(_W, 0x03, 8)
SGX_IOC_VEPC_REMOVE_ALL = 0xA404  # _IO(SGX_MAGIC, 0x04)
SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS = _ioc(_RW, 0x05, 40)
SGX_IOC_ENCLAVE_MODIFY_TYPES = _ioc(_RW, 0x06, 40)
SGX_IOC_ENCLAVE_REMOVE_PAGES = _ioc(_RW, 0x07, 24)
# The legacy drivers' INITs (intel/linux-sgx-driver sgx_user.h; the DCAP
# driver 1.x as psw/urts/linux/isgx_user.h declares it): by address, the
# out-of-tree driver's with an EINITTOKEN. The library resolves the address
# to its enclave file.
SGX_IOC_LEGACY_INIT = _ioc(_W, 0x02, 24)
SGX_IOC_DCAP_INIT = _ioc(_W, 0x02, 16)
# The library's second half of a legacy ADD_PAGE whose mrmask measures some
# chunks only: the page went in unmeasured, these are its EEXTENDs. (The
# number is the legacy ADD_PAGE's; the argument the library's {offset, mrmask}.)
SGX_IOC_LEGACY_ADD_PAGE = _ioc(_W, 0x01, 26)
# What the DCAP driver answers an INIT whose enclave asks for an attribute
# it was not given (SET_ATTRIBUTE): an ioctl return value of urts' header.
SGX_INVALID_PRIVILEGE = 0x40000002

# The argument structs, field by field (all __u64).
STRUCTS: dict[int, tuple[str, ...]] = {
    SGX_IOC_ENCLAVE_CREATE: ("src",),
    SGX_IOC_ENCLAVE_ADD_PAGES: ("src", "offset", "length", "secinfo", "flags", "count"),
    SGX_IOC_ENCLAVE_INIT: ("sigstruct",),
    SGX_IOC_ENCLAVE_PROVISION: ("fd",),
    SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS: ("offset", "length", "permissions", "result", "count"),
    SGX_IOC_ENCLAVE_MODIFY_TYPES: ("offset", "length", "page_type", "result", "count"),
    SGX_IOC_ENCLAVE_REMOVE_PAGES: ("offset", "length", "count"),
    SGX_IOC_LEGACY_INIT: ("addr", "sigstruct", "einittoken"),
    SGX_IOC_DCAP_INIT: ("addr", "sigstruct"),
    SGX_IOC_LEGACY_ADD_PAGE: ("offset", "mrmask"),
}
SGX_PAGE_MEASURE = 0x01
SECINFO_SIZE = 64

# arch/x86/include/asm/sgx.h
SECINFO_R, SECINFO_W, SECINFO_X = 0x1, 0x2, 0x4
SECINFO_PERMISSION_MASK = 0x7
SECINFO_PAGE_TYPE_MASK = 0xFF << 8
SECINFO_RESERVED_MASK = 0xF8 | (((1 << 64) - 1) & ~0xFFFF)
SECINFO_TCS = int(PageType.TCS) << 8
SECINFO_REG = int(PageType.REG) << 8
PAGE_TYPE_MASK = 0xFF
ATTR_UNPRIV_MASK = int(Attribute.DEBUG | Attribute.MODE64BIT | Attribute.KSS |
                       Attribute.AEXNOTIFY)
ATTR_RESERVED_MASK = ((1 << 64) - 1) & ~int(Attribute.INIT | Attribute.DEBUG |
                                            Attribute.MODE64BIT | Attribute.PROVISIONKEY |
                                            Attribute.EINITTOKEN_KEY | Attribute.KSS |
                                            Attribute.AEXNOTIFY)
MISC_RESERVED_MASK = 0xFFFFFFFF & ~0x3  # EXINFO and CPINFO are defined
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
_MASK64 = (1 << 64) - 1


@dataclass
class IoctlResult:
    """What the ioctl returns (0, a positive value, or -errno) and the
    argument struct to copy back to the caller (None: nothing is written)."""

    ret: int
    arg: list[int] | None = None


@dataclass
class Vma:
    start: int
    end: int
    prot: int


def _fail(code: int) -> IoctlResult:
    return IoctlResult(-code)


def _x86_prot(prot: int) -> int:
    """What the page tables give a mapping: on x86 write and execute imply read."""
    prot &= PROT_READ | PROT_WRITE | PROT_EXEC
    return prot | PROT_READ if prot else 0


def validate_offset_length(size: int, offset: int, length: int) -> bool:
    """sgx_validate_offset_length."""
    if offset % PAGE_SIZE or not length or length % PAGE_SIZE:
        return False
    if offset + length > _MASK64:
        return False
    return offset + length - PAGE_SIZE < size


def validate_secinfo(secinfo: bytes) -> bool:
    """sgx_validate_secinfo."""
    flags = int.from_bytes(secinfo[:8], "little")
    perm, page_type = flags & SECINFO_PERMISSION_MASK, flags & SECINFO_PAGE_TYPE_MASK
    if page_type not in (SECINFO_REG, SECINFO_TCS):
        return False
    if perm & SECINFO_W and not perm & SECINFO_R:
        return False
    if page_type == SECINFO_TCS and perm:
        return False
    if flags & SECINFO_RESERVED_MASK:
        return False
    return not any(secinfo[8:SECINFO_SIZE])


@dataclass
class EnclaveFile:
    """One open of /dev/sgx_enclave: the kernel's struct sgx_encl from
    sgx_open (before ECREATE) to sgx_encl_release."""

    driver: SgxDriver
    encl: DriverEnclave | None = None
    attributes_mask: int = ATTR_UNPRIV_MASK
    vmas: list[Vma] = field(default_factory=list)
    released: bool = False
    # An enclave of /dev/isgx or the DCAP driver's /dev/sgx: those drivers
    # have no mprotect hook, so its mappings are not held to the EPCM's rights.
    legacy: bool = False

    # -- ioctls ------------------------------------------------------------
    def ioctl(self, cmd: int, arg: list[int] | None, buffer: bytes | None = None, *,
              provision_fd: bool = False, legacy: bool = False) -> IoctlResult:
        """Everything but ADD_PAGES (see ``add_pages``). ``arg`` is None when
        the library could not read the argument; ``buffer`` is what it
        points to (SECS page, SIGSTRUCT), None when unreadable. ``legacy``:
        the CREATE of a legacy driver's enclave."""
        if cmd == SGX_IOC_ENCLAVE_CREATE:
            if legacy and self.encl is None:
                self.legacy = True
            return self.create(arg, buffer)
        if cmd in (SGX_IOC_LEGACY_INIT, SGX_IOC_DCAP_INIT) and self.legacy:
            return self.init_legacy(arg, buffer, token=cmd == SGX_IOC_LEGACY_INIT)
        if cmd == SGX_IOC_LEGACY_ADD_PAGE and self.legacy:
            return self.extend_legacy(arg)
        if cmd == SGX_IOC_ENCLAVE_INIT:
            return self.init(arg, buffer)
        if cmd == SGX_IOC_ENCLAVE_PROVISION:
            return self.provision(arg, provision_fd)
        if cmd == SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS:
            return self.restrict_permissions(arg)
        if cmd == SGX_IOC_ENCLAVE_MODIFY_TYPES:
            return self.modify_types(arg)
        if cmd == SGX_IOC_ENCLAVE_REMOVE_PAGES:
            return self.remove_pages(arg)
        return _fail(errno.ENOTTY)  # -ENOIOCTLCMD, SGX_IOC_VEPC_REMOVE_ALL included

    def create(self, arg: list[int] | None, secs_page: bytes | None) -> IoctlResult:
        """sgx_ioc_enclave_create / sgx_encl_create."""
        if self.encl is not None:
            return _fail(errno.EINVAL)
        if arg is None or secs_page is None or len(secs_page) != SECS_SIZE:
            return _fail(errno.EFAULT)
        size = int.from_bytes(secs_page[:8], "little")
        if not size or size & (size - 1):
            return _fail(errno.EINVAL)
        try:
            secs = Secs.unpack(secs_page)
        except StructureError:
            return _fail(errno.EIO)  # ECREATE #GP: reserved fields set
        if size < 2 * PAGE_SIZE:
            return _fail(errno.EIO)
        try:
            self.encl = self.driver.create(secs)
        except DriverError as exc:
            return _fail(errno.EIO if exc.errno == errno.EINVAL else exc.errno)
        if self.attributes_mask & Attribute.PROVISIONKEY:
            self.driver.provision(self.encl)
        self.encl.holes_accessible = True
        for vma in self.vmas:
            self._protect(vma.start, vma.end, vma.prot)
        return IoctlResult(0)

    def add_pages(self, arg: list[int] | None, secinfo: bytes | None, position: int,
                  pages: list[bytes | None]) -> IoctlResult:
        """sgx_ioc_enclave_add_pages for the pages from ``position`` (bytes
        done so far) on; ``pages`` are the source pages the library could
        read, None for an unreadable one (the rest of the batch is cut)."""
        encl = self.encl
        if encl is None or encl.initialized:
            return _fail(errno.EINVAL)
        if arg is None:
            return _fail(errno.EFAULT)
        src, offset, length, _, flags, _ = arg
        if src % PAGE_SIZE or not validate_offset_length(encl.size, offset, length):
            return _fail(errno.EINVAL)
        if secinfo is None:
            return _fail(errno.EFAULT)
        if not validate_secinfo(secinfo):
            return _fail(errno.EINVAL)
        done = position
        ret = 0
        for page in pages:
            if done >= length:
                break
            if page is None:
                ret = -errno.EFAULT  # get_user_pages failed
                break
            try:
                self.driver.add_pages(encl, offset + done, page, secinfo,
                                      bool(flags & SGX_PAGE_MEASURE))
            except DriverError as exc:
                ret = -exc.errno
                break
            done += PAGE_SIZE
        out = list(arg)
        out[5] = done
        return IoctlResult(ret, out)

    def add_runs(self, runs: list[AddRun]) -> tuple[int, int]:
        """The ENCLAVE_ADD_PAGES a program's library queued (it made the
        ioctls' checks and answered them): each run is checked again as
        sgx_ioc_enclave_add_pages would, then added in order. Returns (0 or
        -errno, pages added); an error is the first that stopped a run
        (ENOMEM and EIO are what only the driver and the EVM can see)."""
        encl = self.encl
        if encl is None or encl.initialized:
            return -errno.EINVAL, 0
        for n, run in enumerate(runs):
            if (not validate_offset_length(encl.size, run.offset, run.count * PAGE_SIZE)
                    or not validate_secinfo(run.secinfo)
                    or (run.data is not None and len(run.data) != run.count * PAGE_SIZE)):
                done, error = self.driver.add_runs(encl, runs[:n])
                return -(error.errno if error is not None else errno.EINVAL), done
        done, error = self.driver.add_runs(encl, runs)
        return (-error.errno if error is not None else 0), done

    def init(self, arg: list[int] | None, sigstruct: bytes | None) -> IoctlResult:
        """sgx_ioc_enclave_init / sgx_encl_init."""
        encl = self.encl
        if encl is None or encl.initialized:
            return _fail(errno.EINVAL)
        if arg is None or sigstruct is None or len(sigstruct) != SIGSTRUCT_SIZE:
            return _fail(errno.EFAULT)
        vendor = int.from_bytes(sigstruct[16:20], "little")
        if vendor not in (0x0000, 0x8086):
            return _fail(errno.EINVAL)
        if encl.attributes & ~self.attributes_mask:
            return _fail(errno.EACCES)
        cpuid = self.driver.cpuid
        try:
            sig = Sigstruct.unpack(sigstruct, strict=False)
        except StructureError:
            sig = None  # EINIT will refuse it
        if sig is not None:
            attributes_reserved = (~cpuid.attributes & _MASK64) | ATTR_RESERVED_MASK
            misc_reserved = (~cpuid.miscselect & 0xFFFFFFFF) | MISC_RESERVED_MASK
            xfrm_reserved = ~cpuid.xfrm & _MASK64
            if (sig.attributes & sig.attributemask & attributes_reserved
                    or sig.miscselect & sig.miscmask & misc_reserved
                    or sig.xfrm & sig.xfrmmask & xfrm_reserved):
                return _fail(errno.EINVAL)
        try:
            self.driver.init(encl, sigstruct)
        except DriverError as exc:
            return _fail(exc.errno)
        return IoctlResult(0)

    def init_legacy(self, arg: list[int] | None, buffer: bytes | None, *, token: bool
                    ) -> IoctlResult:
        """sgx_ioc_enclave_init of the out-of-tree driver (``token``: the
        buffer is SIGSTRUCT then the EINITTOKEN) or of the DCAP driver
        (SIGSTRUCT only; a zero token, as under flexible launch control).
        EINIT's own error comes back as the ioctl's positive value."""
        encl = self.encl
        if encl is None:
            return _fail(errno.EINVAL)  # sgx_find_encl: a VMA without an enclave
        wanted = SIGSTRUCT_SIZE + (EINITTOKEN_SIZE if token else 0)
        if arg is None or buffer is None or len(buffer) != wanted:
            return _fail(errno.EFAULT)
        if encl.initialized:
            return _fail(errno.EINVAL)
        sigstruct = buffer[:SIGSTRUCT_SIZE]
        einittoken = buffer[SIGSTRUCT_SIZE:] if token else bytes(EINITTOKEN_SIZE)
        if token:
            # No driver gate on PROVISIONKEY: the launch enclave's token decides.
            self.driver.provision(encl)
        elif encl.attributes & Attribute.PROVISIONKEY and not encl.provision_allowed:
            return IoctlResult(SGX_INVALID_PRIVILEGE)
        try:
            self.driver.init(encl, sigstruct, einittoken)
        except DriverError as exc:
            if exc.sgx_error is not None:
                return IoctlResult(int(exc.sgx_error))
            return _fail(exc.errno)
        return IoctlResult(0)

    def extend_legacy(self, arg: list[int] | None) -> IoctlResult:
        """The EEXTENDs of a legacy ADD_PAGE with a partial mrmask, for the
        page the library added (unmeasured) just before."""
        encl = self.encl
        if encl is None:
            return _fail(errno.EINVAL)
        if arg is None:
            return _fail(errno.EFAULT)
        offset, mrmask = arg[0], arg[1] & 0xFFFF
        if encl.base + offset not in encl.pages and encl.deferred.get(encl.base + offset) is None:
            return _fail(errno.EINVAL)  # not added
        try:
            self.driver.eextend_chunks(encl, offset, mrmask)
        except DriverError as exc:
            return _fail(exc.errno)
        return IoctlResult(0)

    def provision(self, arg: list[int] | None, provision_fd: bool) -> IoctlResult:
        """sgx_ioc_enclave_provision: ``provision_fd`` says whether arg.fd is
        an open /dev/sgx_provision of the program (sgx_set_attribute)."""
        if arg is None:
            return _fail(errno.EFAULT)
        if not provision_fd:
            return _fail(errno.EINVAL)
        self.attributes_mask |= int(Attribute.PROVISIONKEY)
        if self.encl is not None:
            self.driver.provision(self.encl)
        return IoctlResult(0)

    def _sgx2_ready(self) -> int:
        if not self.driver.sgx2:
            return errno.ENODEV
        if self.encl is None or not self.encl.initialized:
            return errno.EINVAL
        return 0

    def _per_page(self, arg: list[int], operation: str, value: int) -> IoctlResult:
        """The page loops of the SGX2 ioctls: page by page, each with its
        ETRACK, stopping at the first error with count = bytes done."""
        encl = self.encl
        assert encl is not None
        offset, length = arg[0], arg[1]
        out = list(arg)
        done = 0
        ret = 0
        while done < length:
            try:
                if operation == "restrict":
                    self.driver.restrict_permissions(encl, offset + done, PAGE_SIZE, value)
                elif operation == "modify":
                    self.driver.modify_types(encl, offset + done, PAGE_SIZE, value)
                else:
                    self.driver.remove_pages(encl, offset + done, PAGE_SIZE)
            except DriverError as exc:
                ret = -exc.errno
                if exc.sgx_error is not None and operation != "remove":
                    out[3] = int(exc.sgx_error)
                break
            except Fault:
                ret = -errno.EFAULT
                break
            done += PAGE_SIZE
        out[-1] = done
        return IoctlResult(ret, out)

    def restrict_permissions(self, arg: list[int] | None) -> IoctlResult:
        """sgx_ioc_enclave_restrict_permissions."""
        code = self._sgx2_ready()
        if code:
            return _fail(code)
        if arg is None:
            return _fail(errno.EFAULT)
        offset, length, permissions, result, count = arg
        assert self.encl is not None
        if not validate_offset_length(self.encl.size, offset, length):
            return _fail(errno.EINVAL)
        if permissions & ~SECINFO_PERMISSION_MASK:
            return _fail(errno.EINVAL)
        if permissions & SECINFO_W and not permissions & SECINFO_R:
            return _fail(errno.EINVAL)
        if result or count:
            return _fail(errno.EINVAL)
        return self._per_page(arg, "restrict", permissions)

    def modify_types(self, arg: list[int] | None) -> IoctlResult:
        """sgx_ioc_enclave_modify_types."""
        code = self._sgx2_ready()
        if code:
            return _fail(code)
        if arg is None:
            return _fail(errno.EFAULT)
        offset, length, page_type, result, count = arg
        assert self.encl is not None
        if not validate_offset_length(self.encl.size, offset, length):
            return _fail(errno.EINVAL)
        if page_type & ~PAGE_TYPE_MASK:
            return _fail(errno.EINVAL)
        if result or count:
            return _fail(errno.EINVAL)
        if page_type not in (PageType.TCS, PageType.TRIM):
            return IoctlResult(-errno.EINVAL, [*arg[:4], 0])
        return self._per_page(arg, "modify", page_type)

    def remove_pages(self, arg: list[int] | None) -> IoctlResult:
        """sgx_ioc_enclave_remove_pages."""
        code = self._sgx2_ready()
        if code:
            return _fail(code)
        if arg is None:
            return _fail(errno.EFAULT)
        offset, length, count = arg
        assert self.encl is not None
        if not validate_offset_length(self.encl.size, offset, length):
            return _fail(errno.EINVAL)
        if count:
            return _fail(errno.EINVAL)
        return self._per_page(arg, "remove", 0)

    # -- mappings (sgx_mmap, sgx_vma_mprotect, munmap) -----------------------
    def may_map(self, start: int, end: int, prot: int) -> int:
        """sgx_encl_may_map: 0 or -EACCES."""
        encl = self.encl
        if encl is None:
            return 0
        if encl.initialized and (start < encl.base or end > encl.base + encl.size):
            return -errno.EACCES
        wanted = prot & (PROT_READ | PROT_WRITE | PROT_EXEC)
        first = start & ~(PAGE_SIZE - 1)
        count = (end - first + PAGE_SIZE - 1) // PAGE_SIZE
        pages = encl.pages
        # The range's pages or the enclave's, whichever are fewer; and the
        # pages added but still deferred (their rights are the run's).
        if count <= len(pages):
            records = (pages.get(page) for page in range(first, end, PAGE_SIZE))
        else:
            records = (record for page, record in pages.items() if first <= page < end)
        if any(record is not None and wanted & ~record.vm_max_prot for record in records):
            return -errno.EACCES
        if any(wanted & ~max_prot for _, max_prot in encl.deferred.values_in(first, count)):
            return -errno.EACCES
        return 0

    def _protection(self, start: int, end: int, prot: int) -> tuple[int, int, int] | None:
        """The EVM's page-table change for a mapping: (LINADDR, pages, prot)."""
        encl = self.encl
        if encl is None or encl.destroyed:
            return None
        start, end = max(start, encl.base), min(end, encl.base + encl.size)
        if start >= end:
            return None
        return start, (end - start) // PAGE_SIZE, _x86_prot(prot)

    def _protect(self, start: int, end: int, prot: int) -> None:
        """Mirror the program's mapping into the EVM's page tables."""
        change = self._protection(start, end, prot)
        if change is not None:
            assert self.encl is not None
            self.driver.evm.set_page_protection(self.encl.secs_page, *change)

    def _cut(self, start: int, end: int) -> None:
        kept = []
        for vma in self.vmas:
            if vma.end <= start or vma.start >= end:
                kept.append(vma)
                continue
            if vma.start < start:
                kept.append(Vma(vma.start, start, vma.prot))
            if vma.end > end:
                kept.append(Vma(end, vma.end, vma.prot))
        self.vmas = kept

    def map(self, start: int, length: int, prot: int) -> int:
        end = start + length
        code = 0 if self.legacy else self.may_map(start, end, prot)
        if code:
            return code
        self._cut(start, end)
        self.vmas.append(Vma(start, end, prot))
        self._protect(start, end, prot)
        return 0

    def map_ranges(self, ranges: list[tuple[int, int, int | None]]) -> int:
        """map() of each (start, length, prot), or unmap() where prot is
        None, in order (what the library checked and answered itself): 0,
        or the first failure's -errno. The EVM's page tables take them in
        one request."""
        status = 0
        changes = []
        for start, length, prot in ranges:
            end = start + length
            if prot is None:
                self._cut(start, end)
                change = self._protection(start, end, 0)
                if change is not None:
                    changes.append(change)
                continue
            code = 0 if self.legacy else self.may_map(start, end, prot)
            if code:
                status = status or code
                continue
            self._cut(start, end)
            self.vmas.append(Vma(start, end, prot))
            change = self._protection(start, end, prot)
            if change is not None:
                changes.append(change)
        if changes:
            assert self.encl is not None
            batch = getattr(self.driver.evm, "set_page_protections", None)
            if batch is not None:
                batch(self.encl.secs_page, changes)
            else:
                for change in changes:
                    self.driver.evm.set_page_protection(self.encl.secs_page, *change)
        return status

    def mprotect(self, start: int, length: int, prot: int) -> int:
        end = start + length
        code = 0 if self.legacy else self.may_map(start, end, prot)
        if code:
            return code
        self._cut(start, end)
        self.vmas.append(Vma(start, end, prot))
        self._protect(start, end, prot)
        return 0

    def unmap(self, start: int, length: int) -> int:
        self._cut(start, start + length)
        self._protect(start, start + length, 0)
        return 0

    def mapped(self, address: int) -> bool:
        """Whether the program maps this enclave address (a VMA is there)."""
        return any(vma.start <= address < vma.end for vma in self.vmas)

    def release(self) -> None:
        """sgx_encl_release: the last reference is gone."""
        if self.released:
            return
        self.released = True
        if self.encl is not None and not self.encl.destroyed:
            self.driver.destroy(self.encl)


class ProgramDriver(SgxDriver):
    """The driver of one program: a #PF in ELRANGE is resolved (ELDU, EAUG)
    only where the program maps the enclave, as sgx_vma_fault runs only in
    an enclave VMA; elsewhere the program sees the fault."""

    def __init__(self, evm: Evm, *, augment_on_fault: bool = True):
        super().__init__(evm, augment_on_fault=augment_on_fault)
        self.files: dict[int, EnclaveFile] = {}

    def file_of(self, encl: DriverEnclave) -> EnclaveFile | None:
        for file in self.files.values():
            if file.encl is encl:
                return file
        return None

    def handle_fault(self, encl: DriverEnclave, address: int, error_code: int) -> bool:
        file = self.file_of(encl)
        if file is not None and not file.mapped(address):
            return False
        return super().handle_fault(encl, address, error_code)


def pack_arg(words: list[int]) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


__all__ = ["STRUCTS", "AddRun", "EnclaveFile", "IoctlResult", "ProgramDriver", "SgxError", "Vma",
           "validate_offset_length", "validate_secinfo"]
