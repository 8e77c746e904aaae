/* SGX_IOC_ENCLAVE_ADD_PAGES as the in-kernel driver answers it
   (arch/x86/kernel/cpu/sgx/ioctl.c, sgx_ioc_enclave_add_pages), written for
   vsgx's tests: every check the kernel makes comes back from the ioctl
   itself, with the count written back where the kernel writes it; what
   only the EVM can refuse (the contents of a TCS page) comes back from
   INIT, and every later ADD_PAGES and INIT of that enclave fails with it.
   Prints "ok NAME" or "FAIL NAME: why" per check; the exit status is the
   number of failures.

   usage: add_pages */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define SGX_IOC_ENCLAVE_CREATE 0x4008a400UL
#define SGX_IOC_ENCLAVE_ADD_PAGES 0xc030a401UL
#define SGX_IOC_ENCLAVE_INIT 0x4008a402UL
#define SGX_IOC_ENCLAVE_PROVISION 0x4008a403UL
#define SECINFO_REG_RW 0x203ULL
#define SECINFO_REG_R 0x201ULL
#define SECINFO_TCS 0x100ULL
#define SIZE (4UL << 20)  /* ELRANGE: 1024 pages */
#define UNTOUCHED 0x1234ULL

struct sgx_enclave_add_pages { uint64_t src, offset, length, secinfo, flags, count; };

static int failures;
static int fd;

#define CHECK(name, cond, ...)                                                  \
    do {                                                                        \
        if (cond) {                                                             \
            printf("ok %s\n", name);                                            \
        } else {                                                                \
            printf("FAIL %s: ", name);                                          \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
            failures++;                                                         \
        }                                                                       \
        fflush(stdout);                                                         \
    } while (0)

static uint8_t page[2 * PAGE] __attribute__((aligned(4096)));  /* .bss */

/* ADD_PAGES of [offset, offset + pages) from src: -errno or 0, *count the
   count the ioctl wrote back (UNTOUCHED if it wrote none). */
static int add(uint64_t src, uint64_t offset, uint64_t pages, const uint64_t *secinfo,
               uint64_t *count)
{
    struct sgx_enclave_add_pages arg = {src, offset, pages * PAGE, (uint64_t)secinfo, 0,
                                        UNTOUCHED};
    int ret = ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &arg);
    *count = arg.count;
    return ret == 0 ? 0 : -errno;
}

static void expect_result(const char *name, int ret, int want, uint64_t count,
                          uint64_t want_count)
{
    CHECK(name, ret == want && count == want_count, "ret %d (want %d) count %#lx (want %#lx)",
          ret, want, (unsigned long)count, (unsigned long)want_count);
}

/* The ioctl first, then its count (arguments have no order of evaluation). */
#define expect(name, call, want, count, want_count)                             \
    do {                                                                        \
        int ret_ = (call);                                                      \
        expect_result(name, ret_, want, count, want_count);                     \
    } while (0)

int main(void)
{
    fd = open("/dev/sgx_enclave", O_RDWR);
    CHECK("open", fd >= 0, "errno %d", errno);
    uint64_t secinfo[8] __attribute__((aligned(64))) = {SECINFO_REG_RW};
    uint64_t count;
    memset(page, 0x5a, sizeof(page));
    expect("add before create", add((uint64_t)page, 0, 1, secinfo, &count), -EINVAL, count,
           UNTOUCHED);

    uint8_t *area = mmap(NULL, 2 * SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t base = ((uint64_t)area + SIZE - 1) & ~(SIZE - 1);
    static uint8_t secs[4096] __attribute__((aligned(4096)));
    uint64_t size = SIZE, attributes = 0x6, xfrm = 3;  /* DEBUG | MODE64BIT; x87 | SSE */
    uint32_t ssaframesize = 1;
    memcpy(secs, &size, 8);
    memcpy(secs + 8, &base, 8);
    memcpy(secs + 16, &ssaframesize, 4);
    memcpy(secs + 48, &attributes, 8);
    memcpy(secs + 56, &xfrm, 8);
    uint64_t create = (uint64_t)secs;
    CHECK("create", ioctl(fd, SGX_IOC_ENCLAVE_CREATE, &create) == 0, "errno %d", errno);

    /* The argument, then the source's alignment, offset and length. */
    CHECK("add with an unreadable argument",
          ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, (void *)8) == -1 && errno == EFAULT,
          "errno %d", errno);
    uint8_t *gone = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(gone, PAGE);
    CHECK("add with an unmapped argument",
          ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, gone) == -1 && errno == EFAULT, "errno %d",
          errno);
    expect("add a misaligned source", add((uint64_t)page + 8, 0, 1, secinfo, &count), -EINVAL,
           count, UNTOUCHED);
    struct { const char *name; uint64_t offset, length; } ranges[] = {
        {"add at a misaligned offset", PAGE + 1, PAGE},
        {"add no bytes", 0, 0},
        {"add a length that is not pages", 0, PAGE + 1},
        {"add a range that wraps", -PAGE, 2 * PAGE},
        {"add past ELRANGE", SIZE, PAGE},
        {"add across ELRANGE's end", SIZE - PAGE, 2 * PAGE},
    };
    for (unsigned i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        struct sgx_enclave_add_pages arg = {(uint64_t)page, ranges[i].offset, ranges[i].length,
                                            (uint64_t)secinfo, 0, UNTOUCHED};
        int ret = ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &arg) == 0 ? 0 : -errno;
        expect(ranges[i].name, ret, -EINVAL, arg.count, UNTOUCHED);
    }

    /* The SECINFO: readable, then sgx_validate_secinfo. */
    struct sgx_enclave_add_pages bad = {(uint64_t)page, 0, PAGE, 8, 0, UNTOUCHED};
    CHECK("add with an unreadable secinfo",
          ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &bad) == -1 && errno == EFAULT, "errno %d",
          errno);
    bad.secinfo = (uint64_t)gone;
    CHECK("add with an unmapped secinfo",
          ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &bad) == -1 && errno == EFAULT, "errno %d",
          errno);
    struct { const char *name; uint64_t flags; int reserved_byte; } secinfos[] = {
        {"add a SECS page", 0x003, 0},
        {"add a VA page", 0x303, 0},
        {"add a TRIM page", 0x403, 0},
        {"add a writable page that is not readable", 0x202, 0},
        {"add a TCS page with permissions", 0x101, 0},
        {"add with a reserved flag (bit 3)", 0x20b, 0},
        {"add with a reserved flag (bit 16)", 0x10203, 0},
        {"add with a reserved flag (bit 63)", (1ULL << 63) | 0x203, 0},
        {"add with a reserved secinfo byte", 0x203, 1},
    };
    for (unsigned i = 0; i < sizeof(secinfos) / sizeof(secinfos[0]); i++) {
        uint64_t wrong[8] __attribute__((aligned(64))) = {secinfos[i].flags};
        if (secinfos[i].reserved_byte)
            wrong[7] = 1ULL << 56;
        expect(secinfos[i].name, add((uint64_t)page, 0, 1, wrong, &count), -EINVAL, count,
               UNTOUCHED);
    }

    /* Pages go in; the count says how many. */
    expect("add two pages", add((uint64_t)page, 0, 2, secinfo, &count), 0, count, 2 * PAGE);
    static uint8_t zeros[PAGE] __attribute__((aligned(4096)));
    expect("add a uniform page", add((uint64_t)zeros, 2 * PAGE, 1, secinfo, &count), 0, count,
           PAGE);
    expect("add a page twice", add((uint64_t)page, 0, 1, secinfo, &count), -EBUSY, count, 0);
    expect("add page 5", add((uint64_t)page, 5 * PAGE, 1, secinfo, &count), 0, count, PAGE);
    expect("add stops at an added page", add((uint64_t)page, 4 * PAGE, 3, secinfo, &count),
           -EBUSY, count, PAGE);
    expect("add after the stop", add((uint64_t)page, 6 * PAGE, 1, secinfo, &count), 0, count,
           PAGE);

    /* The source, page by page (memory the program maps itself, and the
       stack, are read as the kernel reads them). */
    uint8_t *two = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    memset(two, 0x33, 2 * PAGE);
    mprotect(two + PAGE, PAGE, PROT_NONE);
    expect("add stops at an unreadable source page",
           add((uint64_t)two, 8 * PAGE, 2, secinfo, &count), -EFAULT, count, PAGE);
    expect("the unreadable page was not added", add((uint64_t)two, 9 * PAGE, 1, secinfo,
                                                    &count), 0, count, PAGE);
    expect("add from an unmapped source", add((uint64_t)gone, 10 * PAGE, 1, secinfo, &count),
           -EFAULT, count, 0);
    uint8_t on_stack[2 * PAGE];
    uint8_t *stack_page = (uint8_t *)(((uint64_t)on_stack + PAGE - 1) & ~(PAGE - 1));
    memset(stack_page, 0x44, PAGE);
    expect("add from the stack", add((uint64_t)stack_page, 10 * PAGE, 1, secinfo, &count), 0,
           count, PAGE);

    /* copy_to_user of the argument fails: EFAULT, though the page was added. */
    uint64_t *readonly = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct sgx_enclave_add_pages fixed = {(uint64_t)page, 11 * PAGE, PAGE, (uint64_t)secinfo, 0,
                                          UNTOUCHED};
    memcpy(readonly, &fixed, sizeof(fixed));
    mprotect(readonly, PAGE, PROT_READ);
    CHECK("add with an argument it cannot write back",
          ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, readonly) == -1 && errno == EFAULT &&
          readonly[5] == UNTOUCHED, "errno %d count %#lx", errno, (unsigned long)readonly[5]);
    expect("that page was added", add((uint64_t)page, 11 * PAGE, 1, secinfo, &count), -EBUSY,
           count, 0);

    /* After a synchronous point (another ioctl sent the queue): pages still
       count as added, and what may be mapped follows their rights, those
       of pages held deferred too. */
    uint64_t provision = (uint64_t)fd;
    CHECK("provision with a file that is not sgx_provision",
          ioctl(fd, SGX_IOC_ENCLAVE_PROVISION, &provision) == -1 && errno == EINVAL,
          "errno %d", errno);
    expect("add a page twice after a flush", add((uint64_t)page, 0, 1, secinfo, &count), -EBUSY,
           count, 0);
    uint64_t read_only[8] __attribute__((aligned(64))) = {SECINFO_REG_R};
    uint8_t *heap = mmap(NULL, 300 * PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    expect("add 300 uniform read-only pages",
           add((uint64_t)heap, 100 * PAGE, 300, read_only, &count), 0, count, 300 * PAGE);
    CHECK("map above a queued page's rights",
          mmap((void *)(base + 399 * PAGE), PAGE, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED && errno == EACCES,
          "errno %d", errno);
    CHECK("map within a queued page's rights",
          mmap((void *)(base + 399 * PAGE), PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) !=
          MAP_FAILED, "errno %d", errno);

    /* A TCS page whose reserved FLAGS bits are set: EADD refuses it in the
       EVM, which the ioctl cannot know; INIT says so, and so does every
       later ADD_PAGES and INIT. */
    uint64_t tcs_secinfo[8] __attribute__((aligned(64))) = {SECINFO_TCS};
    static uint8_t tcs[PAGE] __attribute__((aligned(4096)));
    memset(tcs + 8, 0xff, 8);  /* TCS.FLAGS */
    expect("add a TCS page only the EVM can refuse",
           add((uint64_t)tcs, 20 * PAGE, 1, tcs_secinfo, &count), 0, count, PAGE);
    static uint8_t sigstruct[1808];
    uint64_t init = (uint64_t)sigstruct;
    CHECK("init answers for the queued pages",
          ioctl(fd, SGX_IOC_ENCLAVE_INIT, &init) == -1 && errno == EIO, "errno %d", errno);
    expect("adds after it fail with it", add((uint64_t)page, 30 * PAGE, 1, secinfo, &count),
           -EIO, count, 0);
    CHECK("init again fails with it",
          ioctl(fd, SGX_IOC_ENCLAVE_INIT, &init) == -1 && errno == EIO, "errno %d", errno);
    close(fd);
    return failures;
}
