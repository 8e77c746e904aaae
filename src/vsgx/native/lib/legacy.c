/* The legacy SGX drivers that Intel's PSW before 2.16 speaks to: the
   out-of-tree driver's /dev/isgx (intel/linux-sgx-driver: sgx_user.h,
   sgx_ioctl.c) and the DCAP driver before 1.36 on /dev/sgx (the ioctls of
   psw/urts/linux/isgx_user.h: INIT without a token, SET_ATTRIBUTE with a
   /dev/sgx_prv descriptor).

   Those drivers find an enclave by address, not by descriptor: mmap of the
   device makes it (device.c, map_legacy), CREATE fills it, ADD_PAGE and
   INIT name an address inside it, and it lives as long as its mapping.
   Every ioctl is checked here in the driver's order with its error codes;
   what passes goes down the in-kernel path of device.c (its queued
   ADD_PAGES and the launcher's EnclaveFile), built from copies taken here,
   so what was checked is what is used.

   What they answer differently from the in-kernel driver, kept here: the
   argument struct is copied in whole first (EFAULT); copies of the SECS,
   SIGSTRUCT and EINITTOKEN that fail make the ioctl return the bytes not
   copied (copy_from_user's count, returned as is by those drivers); a page
   already added is EEXIST; an ECREATE failure is EFAULT; EINIT's error is
   the ioctl's positive value. Not provided: the EDMM ioctls of the sgx2
   branch (EMODPR, MKTCS, TRIM, NOTIFY_ACCEPT, PAGE_REMOVE answer ENOTTY,
   as a driver without them does, which is what urts' all-zero EMODPR probe
   asks), SGX_LE_ROLLBACK, and the death of an enclave whose mapping is
   split by a partial munmap. An mrmask other than 0 and 0xFFFF (the two
   urts sends) costs a round trip: the page is added unmeasured, then the
   chunks it names are EEXTENDed. */
#include "vsgx_exec.h"

#include <cpuid.h>
#include <errno.h>
#include <string.h>

#define IOC_SIZE(cmd) (((cmd) >> 16) & 0x3fff)
#define ISGX_CREATE 0x4008a400u           /* {u64 src} */
#define ISGX_ADD_PAGE 0x401aa401u         /* packed {addr, src, secinfo, u16 mrmask} */
#define ISGX_SET_ATTRIBUTE 0x4010a403u    /* DCAP: {addr, attribute_fd} */
#define ISGX_EMODPR 0x4018a409u
#define ISGX_MKTCS 0x4010a40au
#define ISGX_TRIM 0x4010a40bu
#define ISGX_NOTIFY_ACCEPT 0x4010a40cu
#define ISGX_PAGE_REMOVE 0x4008a40du
#define INKERNEL_ADD_PAGES 0xc030a401u
#define INKERNEL_PROVISION 0x4008a403u

#define SECS_SIZE 4096
#define SIGSTRUCT_SIZE 1808
#define SECINFO_SIZE 64
#define ATTR_MODE64BIT 0x4ULL
#define SECS_ATTR_RESERVED_MASK (~0x37ULL)  /* INIT DEBUG MODE64BIT PROVISIONKEY EINITTOKEN_KEY */
#define SECINFO_R 0x1ULL
#define SECINFO_W 0x2ULL
#define SECINFO_X 0x4ULL
#define SECINFO_PAGE_TYPE_MASK (0xffULL << 8)
#define SECINFO_RESERVED_MASK (~(0x7ULL | SECINFO_PAGE_TYPE_MASK))
#define SECINFO_TCS (1ULL << 8)
#define SECINFO_REG (2ULL << 8)

struct isgx_add_page {
    uint64_t addr, src, secinfo;
    uint16_t mrmask;
} __attribute__((packed));
_Static_assert(sizeof(struct isgx_add_page) == 26, "sgx_enclave_add_page");

/* copy_from_user: 0, or the bytes left uncopied (a copy stops at the
   first page it cannot read). */
static long copy_in_counted(uint64_t address, void *out, size_t length)
{
    if (vsgx_read_own(address, out, length) == 0)
        return 0;
    size_t done = 0;
    while (done < length) {
        size_t chunk = PAGE - ((address + done) & (PAGE - 1));
        if (chunk > length - done)
            chunk = length - done;
        if (vsgx_read_own(address + done, (uint8_t *)out + done, chunk) < 0)
            break;
        done += chunk;
    }
    return (long)(length - done);
}

/* SSA frame pages the XSAVE features of XFRM need (sgx_ssaframesize_tbl:
   the end of each feature's area, from CPUID 0xD). */
static uint32_t needed_ssa_frames(uint64_t xfrm)
{
    uint32_t needed = 1;
    for (unsigned i = 2; i < 64; i++) {
        if (!(xfrm & (1ULL << i)))
            continue;
        unsigned a, b, c, d;
        __cpuid_count(0xd, i, a, b, c, d);
        uint32_t frames = (uint32_t)((b + a + PAGE - 1) / PAGE);
        if (frames > needed)
            needed = frames;
    }
    return needed;
}

static int all_zero(const uint8_t *p, size_t length)
{
    for (size_t i = 0; i < length; i++)
        if (p[i])
            return 0;
    return 1;
}

/* sgx_validate_secs */
static int secs_valid(const uint8_t *secs)
{
    uint64_t size, attributes, xfrm;
    uint32_t ssaframesize;
    memcpy(&size, secs, 8);
    memcpy(&ssaframesize, secs + 16, 4);
    memcpy(&attributes, secs + 48, 8);
    memcpy(&xfrm, secs + 56, 8);
    if (attributes & SECS_ATTR_RESERVED_MASK)
        return 0;
    if (!(attributes & ATTR_MODE64BIT))
        return 0;  /* a 32-bit enclave only from a compat-mode task */
    uint32_t leaf[4];
    vsgx_cpuid_answer(0x12, 0, leaf);
    unsigned max_bits = (leaf[3] >> 8) & 0xff;
    if (max_bits < 64 && size > (1ULL << max_bits))
        return 0;
    vsgx_cpuid_answer(0x12, 1, leaf);
    uint64_t xfrm_mask = leaf[2] | (uint64_t)leaf[3] << 32;
    if ((xfrm & 0x3) != 0x3 || (xfrm & ~xfrm_mask))
        return 0;
    if (((xfrm >> 3) & 1) != ((xfrm >> 4) & 1))
        return 0;  /* BNDREGS and BNDCSR together */
    if (ssaframesize == 0 || needed_ssa_frames(xfrm) > ssaframesize)
        return 0;
    if (size == 0 || (size & (size - 1)))
        return 0;
    /* reserved1 (24 bytes at 24), reserved2 (32 at 96), reserved3 (96 at
       160), reserved4 (3836 at 260) */
    return all_zero(secs + 24, 24) && all_zero(secs + 96, 32) && all_zero(secs + 160, 96) &&
           all_zero(secs + 260, SECS_SIZE - 260);
}

static int secinfo_valid(const uint64_t secinfo[8])
{
    uint64_t perm = secinfo[0] & 0x7, type = secinfo[0] & SECINFO_PAGE_TYPE_MASK;
    if ((secinfo[0] & SECINFO_RESERVED_MASK) || ((perm & SECINFO_W) && !(perm & SECINFO_R)) ||
        (type != SECINFO_TCS && type != SECINFO_REG))
        return 0;
    for (int i = 1; i < 8; i++)
        if (secinfo[i])
            return 0;
    return 1;
}

/* sgx_validate_tcs: what would make EENTER fail later, refused now. */
static int tcs_valid(const uint8_t *tcs)
{
    uint64_t flags, ossa, ofsbase, ogsbase;
    uint32_t fslimit, gslimit;
    memcpy(&flags, tcs + 8, 8);
    memcpy(&ossa, tcs + 16, 8);
    memcpy(&ofsbase, tcs + 48, 8);
    memcpy(&ogsbase, tcs + 56, 8);
    memcpy(&fslimit, tcs + 64, 4);
    memcpy(&gslimit, tcs + 68, 4);
    if (flags || (ossa & (PAGE - 1)) || (ofsbase & (PAGE - 1)) || (ogsbase & (PAGE - 1)) ||
        (fslimit & 0xfff) != 0xfff || (gslimit & 0xfff) != 0xfff)
        return 0;
    return all_zero(tcs + 72, PAGE - 72);  /* reserved */
}

/* sgx_find_encl: the created enclave whose mapping holds `address`. */
static struct sgx_file *enclave_at(int kind, uint64_t address, uint64_t *base, uint64_t *size,
                                   int *initialized)
{
    struct sgx_file *file = vsgx_legacy_enclave_at(kind, address, 0, 0);
    if (file == NULL || !vsgx_legacy_created(file, base, size, initialized))
        return NULL;
    return file;
}

static long legacy_create(int kind, const uint64_t *arg)
{
    static __thread uint8_t secs[SECS_SIZE] __attribute__((aligned(PAGE)));
    long left = copy_in_counted(arg[0], secs, SECS_SIZE);
    if (left)
        return left;
    if (!secs_valid(secs))
        return -EINVAL;
    uint64_t size, base;
    memcpy(&size, secs, 8);
    memcpy(&base, secs + 8, 8);
    /* The one VMA of the device at exactly ELRANGE. (The driver looks for
       it after ECREATE: a SECS that both ECREATE refuses and no mapping
       holds gets EINVAL here, EFAULT there.) */
    struct sgx_file *file = vsgx_legacy_enclave_at(kind, base, size, 1);
    if (file == NULL)
        return -EINVAL;
    uint64_t old_base, old_size;
    int initialized;
    if (vsgx_legacy_created(file, &old_base, &old_size, &initialized))
        return -EINVAL;  /* this mapping has its enclave */
    uint64_t create_arg[1] = {(uint64_t)secs};
    long ret = vsgx_enclave_ioctl(file, ISGX_CREATE, (uint64_t)create_arg);
    if (ret < 0 && ret != -ENOMEM && ret != -ENODEV)
        return -EFAULT;  /* ECREATE failed */
    return ret;
}

static long legacy_add_page(int kind, uint64_t arg_address)
{
    struct isgx_add_page add;
    if (vsgx_read_own(arg_address, &add, sizeof(add)) < 0)
        return -EFAULT;
    if (add.addr & (PAGE - 1))
        return -EINVAL;
    uint64_t secinfo[8] __attribute__((aligned(64)));
    if (vsgx_read_own(add.secinfo, secinfo, SECINFO_SIZE) < 0)
        return -EFAULT;
    uint64_t base, size;
    int initialized;
    struct sgx_file *file = enclave_at(kind, add.addr, &base, &size, &initialized);
    if (file == NULL)
        return -EINVAL;
    if (add.addr < base || add.addr > base + size - PAGE)
        return -EINVAL;
    uint8_t page[PAGE] __attribute__((aligned(PAGE)));
    if (vsgx_read_own(add.src, page, PAGE) < 0)
        return -EFAULT;
    if (!secinfo_valid(secinfo))
        return -EINVAL;
    if ((secinfo[0] & SECINFO_PAGE_TYPE_MASK) == SECINFO_TCS && !tcs_valid(page))
        return -EINVAL;
    if (initialized)
        return -EINVAL;
    /* A TCS takes no permissions in the in-kernel ABI; the legacy drivers
       pass its SECINFO's to EADD, which ignores them for a TCS. */
    if ((secinfo[0] & SECINFO_PAGE_TYPE_MASK) == SECINFO_TCS)
        secinfo[0] &= ~(SECINFO_R | SECINFO_W | SECINFO_X);
    uint64_t pages_arg[6] = {(uint64_t)page, add.addr - base, PAGE, (uint64_t)secinfo,
                             add.mrmask == 0xffff ? 1 : 0, 0};
    long ret = vsgx_enclave_ioctl(file, INKERNEL_ADD_PAGES, (uint64_t)pages_arg);
    if (ret == -EBUSY)
        return -EEXIST;  /* radix_tree_lookup: the page is there */
    if (ret < 0 || add.mrmask == 0 || add.mrmask == 0xffff)
        return ret;
    /* Some chunks only: their EEXTENDs right after that EADD (the queued
       page goes first), as sgx_measure issues them. */
    uint64_t extend_arg[4] = {add.addr - base, add.mrmask, 0, 0};
    return vsgx_enclave_ioctl(file, VSGX_LEGACY_EXTEND, (uint64_t)extend_arg);
}

static long legacy_init(int kind, int dcap, uint64_t arg_address)
{
    uint64_t arg[3];
    if (vsgx_read_own(arg_address, arg, dcap ? 16 : 24) < 0)
        return -EFAULT;
    static __thread uint8_t sigstruct[SIGSTRUCT_SIZE];
    static __thread uint8_t token[VSGX_EINITTOKEN_SIZE];
    long left = copy_in_counted(arg[1], sigstruct, SIGSTRUCT_SIZE);
    if (left)
        return left;
    if (!dcap && (left = copy_in_counted(arg[2], token, VSGX_EINITTOKEN_SIZE)))
        return left;
    uint64_t base, size;
    int initialized;
    struct sgx_file *file = enclave_at(kind, arg[0], &base, &size, &initialized);
    if (file == NULL)
        return -EINVAL;
    if (initialized)
        return -EINVAL;
    uint64_t init_arg[3] = {arg[0], (uint64_t)sigstruct, (uint64_t)token};
    return vsgx_enclave_ioctl(file, dcap ? VSGX_DCAP_INIT : VSGX_LEGACY_INIT,
                              (uint64_t)init_arg);
}

/* The DCAP driver's SET_ATTRIBUTE: a /dev/sgx_prv descriptor lets the
   enclave at `addr` have PROVISIONKEY. */
static long legacy_set_attribute(int kind, uint64_t arg_address)
{
    uint64_t arg[2];
    if (vsgx_read_own(arg_address, arg, sizeof(arg)) < 0)
        return -EFAULT;
    uint64_t base, size;
    int initialized;
    struct sgx_file *file = enclave_at(kind, arg[0], &base, &size, &initialized);
    if (file == NULL)
        return -EINVAL;
    if (arg[1] > 0x7fffffff || !vsgx_is_provision_fd((int)arg[1]))
        return -EINVAL;
    uint64_t provision_arg[1] = {arg[1]};
    return vsgx_enclave_ioctl(file, INKERNEL_PROVISION, (uint64_t)provision_arg);
}

long vsgx_legacy_ioctl(int dcap, unsigned long cmd, uint64_t arg_address)
{
    int kind = dcap ? VSGX_FILE_DCAP : VSGX_FILE_ISGX;
    switch (cmd) {
    case ISGX_CREATE: {
        uint64_t arg[1];
        if (vsgx_read_own(arg_address, arg, sizeof(arg)) < 0)
            return -EFAULT;
        if (!vsgx_channel_available())
            return -ENODEV;
        return legacy_create(kind, arg);
    }
    case ISGX_ADD_PAGE:
        return vsgx_channel_available() ? legacy_add_page(kind, arg_address) : -ENODEV;
    case VSGX_LEGACY_INIT:
        if (dcap)
            return -ENOTTY;
        return vsgx_channel_available() ? legacy_init(kind, 0, arg_address) : -ENODEV;
    case VSGX_DCAP_INIT:
        if (!dcap)
            return -ENOTTY;
        return vsgx_channel_available() ? legacy_init(kind, 1, arg_address) : -ENODEV;
    case ISGX_SET_ATTRIBUTE:
        if (!dcap)
            return -ENOTTY;
        return vsgx_channel_available() ? legacy_set_attribute(kind, arg_address) : -ENODEV;
    case ISGX_EMODPR:
    case ISGX_MKTCS:
    case ISGX_TRIM:
    case ISGX_NOTIFY_ACCEPT:
    case ISGX_PAGE_REMOVE:
    default:
        return -ENOTTY;  /* -ENOIOCTLCMD: no EDMM in this driver */
    }
}
