/* A loader in the Linux selftests' style, written for vsgx's tests: it loads
   the plain test enclave (tests/enclaves/plain) through /dev/sgx_enclave
   ioctls and mmap, finds __vdso_sgx_enter_enclave through
   getauxval(AT_SYSINFO_EHDR) and PT_DYNAMIC (DT_HASH, DT_SYMTAB,
   DT_STRTAB), and checks what the kernel's driver and vDSO answer. It
   prints "ok NAME" or "FAIL NAME: why" per check; the exit status is the
   number of failures.

   usage: uapi_loader ENCLAVE.elf ENCLAVE.elf.sig */
#define _GNU_SOURCE
#include <cpuid.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#define PAGE 4096UL
#define SGX_IOC_ENCLAVE_CREATE 0x4008a400UL
#define SGX_IOC_ENCLAVE_ADD_PAGES 0xc030a401UL
#define SGX_IOC_ENCLAVE_INIT 0x4008a402UL
#define SGX_IOC_ENCLAVE_PROVISION 0x4008a403UL
#define SGX_IOC_VEPC_REMOVE_ALL 0xa404UL
#define SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS 0xc028a405UL
#define SGX_IOC_ENCLAVE_MODIFY_TYPES 0xc028a406UL
#define SGX_IOC_ENCLAVE_REMOVE_PAGES 0xc018a407UL
#define EENTER 2
#define ERESUME 3
#define EEXIT 4

enum { OP_NOP, OP_PUT_BUFFER, OP_GET_BUFFER, OP_PUT_ADDRESS, OP_GET_ADDRESS, OP_EACCEPT,
       OP_EMODPE, OP_INIT_TCS_PAGE, OP_DIVIDE, OP_TOUCH = 26 };

struct sgx_enclave_add_pages { uint64_t src, offset, length, secinfo, flags, count; };
struct sgx_enclave_restrict_permissions { uint64_t offset, length, permissions, result, count; };
struct sgx_enclave_modify_types { uint64_t offset, length, page_type, result, count; };
struct sgx_enclave_run {
    uint64_t tcs;
    uint32_t function;
    uint16_t exception_vector, exception_error_code;
    uint64_t exception_addr, user_handler, user_data;
    uint8_t reserved[216];
};
typedef int (*vdso_enter_t)(unsigned long rdi, unsigned long rsi, unsigned long rdx,
                            unsigned int function, unsigned long r8, unsigned long r9,
                            struct sgx_enclave_run *run);

static int failures;
static vdso_enter_t vdso_enter;

/* The vDSO keeps only RBX and RBP (the enclave may change R12-R15): call it
   as the selftests' call.S does, saving the other callee-saved registers,
   and pass the seventh argument on the stack. */
int enter(unsigned long rdi, unsigned long rsi, unsigned long rdx, unsigned int function,
          unsigned long r8, unsigned long r9, struct sgx_enclave_run *run);
__asm__(".text\n"
        ".globl enter\n"
        "enter:\n"
        "    push %r15\n"
        "    push %r14\n"
        "    push %r13\n"
        "    push %r12\n"
        "    push %rbx\n"
        "    push $0\n"
        "    push 0x38(%rsp)\n"
        "    call *vdso_enter(%rip)\n"
        "    add $0x10, %rsp\n"
        "    pop %rbx\n"
        "    pop %r12\n"
        "    pop %r13\n"
        "    pop %r14\n"
        "    pop %r15\n"
        "    ret\n");
static uint64_t base, size, image_end;
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

static void *read_file(const char *path, size_t *length)
{
    int f = open(path, O_RDONLY);
    if (f < 0)
        return NULL;
    struct stat st;
    fstat(f, &st);
    void *data = malloc((size_t)st.st_size);
    if (read(f, data, (size_t)st.st_size) != st.st_size) {
        close(f);
        return NULL;
    }
    close(f);
    *length = (size_t)st.st_size;
    return data;
}

/* -- the vDSO, as the selftests find it ------------------------------------ */
static unsigned long elf_hash(const char *name)
{
    unsigned long h = 0, high;
    while (*name) {
        h = (h << 4) + (unsigned char)*name++;
        high = h & 0xf0000000;
        if (high)
            h ^= high >> 24;
        h &= ~high;
    }
    return h;
}

static void *vdso_symbol(const char *wanted)
{
    char *vdso = (char *)getauxval(AT_SYSINFO_EHDR);
    if (vdso == NULL)
        return NULL;
    Elf64_Ehdr *ehdr = (Elf64_Ehdr *)vdso;
    Elf64_Phdr *phdr = (Elf64_Phdr *)(vdso + ehdr->e_phoff);
    Elf64_Dyn *dyn = NULL;
    for (int i = 0; i < ehdr->e_phnum; i++)
        if (phdr[i].p_type == PT_DYNAMIC)
            dyn = (Elf64_Dyn *)(vdso + phdr[i].p_offset);
    if (dyn == NULL)
        return NULL;
    Elf64_Sym *symtab = NULL;
    const char *strtab = NULL;
    Elf64_Word *hash = NULL;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        if (dyn->d_tag == DT_SYMTAB)
            symtab = (Elf64_Sym *)(vdso + dyn->d_un.d_ptr);
        if (dyn->d_tag == DT_STRTAB)
            strtab = vdso + dyn->d_un.d_ptr;
        if (dyn->d_tag == DT_HASH)
            hash = (Elf64_Word *)(vdso + dyn->d_un.d_ptr);
    }
    if (!symtab || !strtab || !hash)
        return NULL;
    Elf64_Word nbucket = hash[0];
    Elf64_Word *bucket = &hash[2], *chain = &hash[2 + nbucket];
    for (Elf64_Word i = bucket[elf_hash(wanted) % nbucket]; i != STN_UNDEF; i = chain[i])
        if (!strcmp(strtab + symtab[i].st_name, wanted))
            return vdso + symtab[i].st_value;
    return NULL;
}

/* Raw ENCLU, as a runtime without the vDSO function executes it: EENTER with
   RCX = the AEP (the ENCLU itself); EEXIT comes back after it, an AEX as a
   signal at the AEP with RAX = ERESUME. */
uint64_t raw_enter(uint64_t tcs, uint64_t *op);
extern char raw_aep[], raw_done[];
__asm__(".text\n"
        ".globl raw_enter, raw_aep, raw_done\n"
        "raw_enter:\n"
        "    push %rbx\n"
        "    push %rbp\n"
        "    push %r12\n"
        "    push %r13\n"
        "    push %r14\n"
        "    push %r15\n"
        "    mov %rdi, %rbx\n"
        "    mov %rsi, %rdi\n"
        "    lea raw_aep(%rip), %rcx\n"
        "    mov $2, %eax\n"
        "raw_aep:\n"
        "    .byte 0x0f, 0x01, 0xd7\n"
        "raw_done:\n"
        "    pop %r15\n"
        "    pop %r14\n"
        "    pop %r13\n"
        "    pop %r12\n"
        "    pop %rbp\n"
        "    pop %rbx\n"
        "    ret\n");

static volatile int raw_signal;
static volatile uint64_t raw_rip, raw_rax, raw_rbx;

static void raw_handler(int sig, siginfo_t *info, void *context)
{
    ucontext_t *uc = context;
    raw_signal = sig;
    raw_rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    raw_rax = (uint64_t)uc->uc_mcontext.gregs[REG_RAX];
    raw_rbx = (uint64_t)uc->uc_mcontext.gregs[REG_RBX];
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)raw_done;  /* give up the entry */
}

static volatile int own_sigill;

static void own_sigill_handler(int sig, siginfo_t *info, void *context)
{
    own_sigill++;
    ((ucontext_t *)context)->uc_mcontext.gregs[REG_RIP] += 2;
}

/* -- calls into the plain enclave --------------------------------------- */
/* ERESUME returns through the stack of the EENTER that was interrupted (the
   enclave restores that untrusted RSP at its EEXIT): both go through this
   one function, so that the frames are the same. */
__attribute__((noinline)) static int call(uint64_t tcs, uint64_t *op, struct sgx_enclave_run *run, unsigned int function)
{
    memset(run, 0, sizeof(*run));
    run->tcs = tcs;
    return enter((unsigned long)op, 0, 0, function, 0, 0, run);
}

static int put_buffer(uint64_t tcs, uint64_t value)
{
    uint64_t op[8] = {OP_PUT_BUFFER, value};
    struct sgx_enclave_run run;
    return call(tcs, op, &run, EENTER) == 0 && run.function == EEXIT;
}

static uint64_t get_buffer(uint64_t tcs)
{
    uint64_t op[8] = {OP_GET_BUFFER, 0};
    struct sgx_enclave_run run;
    if (call(tcs, op, &run, EENTER) != 0 || run.function != EEXIT)
        return ~0ull;
    return op[1];
}

static int handler_calls;

static int exit_handler(long rdi, long rsi, long rdx, long ursp, long r8, long r9,
                        struct sgx_enclave_run *run)
{
    handler_calls++;
    run->user_data = 0;
    return 0;
}

static void *thread_body(void *argument)
{
    uint64_t tcs = (uint64_t)argument;
    for (uint64_t i = 1; i <= 20; i++) {
        uint64_t op[8] = {OP_PUT_ADDRESS, tcs + i, 0};
        uint64_t slot = base + image_end - PAGE + ((tcs - base) / PAGE) * 8;
        op[2] = slot;
        struct sgx_enclave_run run;
        if (call(tcs, op, &run, EENTER) != 0 || run.function != EEXIT)
            return (void *)1;
        uint64_t get[8] = {OP_GET_ADDRESS, 0, slot};
        if (call(tcs, get, &run, EENTER) != 0 || get[1] != tcs + i)
            return (void *)1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s ENCLAVE.elf ENCLAVE.elf.sig\n", argv[0]);
        return 100;
    }
    size_t elf_length, sig_length;
    uint8_t *elf = read_file(argv[1], &elf_length);
    uint8_t *sigstruct = read_file(argv[2], &sig_length);
    if (elf == NULL || sigstruct == NULL || sig_length != 1808) {
        fprintf(stderr, "cannot read the enclave or its SIGSTRUCT\n");
        return 100;
    }

    /* CPUID says SGX is there: leaf 7, and leaf 0x12 from the EVM's model
       (the program's CPUID instructions trap where the CPU cannot fault). */
    unsigned int a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    CHECK("cpuid sgx", b & (1u << 2), "leaf 7 ebx %#x", b);
    __cpuid_count(0x12, 0, a, b, c, d);
    CHECK("cpuid sgx1 sgx2", (a & 3) == 3 && (d >> 8 & 0xff) >= 36, "leaf 0x12.0 eax %#x edx %#x",
          a, d);
    __cpuid_count(0x12, 2, a, b, c, d);
    CHECK("cpuid epc section", (a & 0xf) == 1 && (c & 0xfffff000) != 0, "leaf 0x12.2 %#x %#x",
          a, c);

    /* Probes are cheap and local (urts opens and closes ~98 per enclave). */
    int probes_ok = 1;
    for (int i = 0; i < 200; i++) {
        int probe = open("/dev/sgx/enclave", O_RDWR);
        probes_ok &= probe >= 0 && close(probe) == 0;
    }
    CHECK("probes", probes_ok, "open/close of /dev/sgx/enclave failed");
    struct stat st;
    CHECK("stat", stat("/dev/sgx_enclave", &st) == 0 && S_ISCHR(st.st_mode), "not a device");

    fd = open("/dev/sgx_enclave", O_RDWR);
    CHECK("open", fd >= 0, "errno %d", errno);
    void *probe = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
    CHECK("mmap before create", probe != MAP_FAILED, "errno %d", errno);
    munmap(probe, PAGE);
    probe = mmap(NULL, PAGE, PROT_EXEC, MAP_SHARED, fd, 0);
    CHECK("mmap exec before create", probe != MAP_FAILED, "errno %d", errno);
    munmap(probe, PAGE);
    errno = 0;
    CHECK("mmap private", mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED &&
          errno == EINVAL, "errno %d", errno);

    struct sgx_enclave_restrict_permissions restrict_arg = {0};
    CHECK("restrict before init", ioctl(fd, SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS,
                                        &restrict_arg) == -1 && errno == EINVAL, "errno %d", errno);
    CHECK("unknown ioctl", ioctl(fd, 0xc008a4ffUL, &restrict_arg) == -1 && errno == ENOTTY,
          "errno %d", errno);
    CHECK("vepc remove all", ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL) == -1 && errno == ENOTTY,
          "errno %d", errno);
    struct sgx_enclave_add_pages add = {0};
    CHECK("add before create", ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add) == -1 &&
          errno == EINVAL, "errno %d", errno);
    uint64_t create_arg = 0;
    CHECK("create from NULL", ioctl(fd, SGX_IOC_ENCLAVE_CREATE, &create_arg) == -1 &&
          errno == EFAULT, "errno %d", errno);
    CHECK("create bad arg", ioctl(fd, SGX_IOC_ENCLAVE_CREATE, (void *)8) == -1 && errno == EFAULT,
          "errno %d", errno);

    /* The layout of vsgx's plain enclaves: PT_LOADs at their page-aligned
       addresses (memsz, zero-padded), the first holding TCS pages, then
       SIGSTRUCT.SWDEFINED unmeasured heap pages. */
    Elf64_Ehdr *ehdr = (Elf64_Ehdr *)elf;
    Elf64_Phdr *phdr = (Elf64_Phdr *)(elf + ehdr->e_phoff);
    uint32_t heap_pages;
    memcpy(&heap_pages, sigstruct + 40, 4);
    for (int i = 0; i < ehdr->e_phnum; i++)
        if (phdr[i].p_type == PT_LOAD)
            image_end = (phdr[i].p_vaddr + phdr[i].p_memsz + PAGE - 1) & ~(PAGE - 1);
    image_end += heap_pages * PAGE;
    for (size = 2 * PAGE; size < image_end; size <<= 1)
        ;
    uint8_t *area = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base = ((uint64_t)area + size - 1) & ~(size - 1);
    munmap(area, base - (uint64_t)area);
    munmap((void *)(base + size), (uint64_t)area + size - base);

    static uint8_t secs[4096] __attribute__((aligned(4096)));
    uint64_t attributes, xfrm;
    uint32_t miscselect;
    memcpy(&miscselect, sigstruct + 900, 4);
    memcpy(&attributes, sigstruct + 928, 8);
    memcpy(&xfrm, sigstruct + 936, 8);
    attributes &= ~1ull;  /* INIT */
    uint64_t bad_size = 3 * PAGE;
    memcpy(secs, &bad_size, 8);
    create_arg = (uint64_t)secs;
    CHECK("create bad size", ioctl(fd, SGX_IOC_ENCLAVE_CREATE, &create_arg) == -1 &&
          errno == EINVAL, "errno %d", errno);
    memcpy(secs, &size, 8);
    memcpy(secs + 8, &base, 8);
    uint32_t ssaframesize = 1;
    memcpy(secs + 16, &ssaframesize, 4);
    memcpy(secs + 20, &miscselect, 4);
    memcpy(secs + 48, &attributes, 8);
    memcpy(secs + 56, &xfrm, 8);
    CHECK("create", ioctl(fd, SGX_IOC_ENCLAVE_CREATE, &create_arg) == 0, "errno %d", errno);
    CHECK("create twice", ioctl(fd, SGX_IOC_ENCLAVE_CREATE, &create_arg) == -1 &&
          errno == EINVAL, "errno %d", errno);

    uint64_t secinfo[8] __attribute__((aligned(64))) = {0};
    int first = 1, seg_prot[16], nseg = 0;
    uint64_t seg_start[16], seg_end[16];
    for (int i = 0; i < ehdr->e_phnum; i++) {
        Elf64_Phdr *p = &phdr[i];
        if (p->p_type != PT_LOAD)
            continue;
        uint64_t start = p->p_vaddr & ~(PAGE - 1);
        uint64_t end = (p->p_vaddr + p->p_memsz + PAGE - 1) & ~(PAGE - 1);
        uint8_t *pages = mmap(NULL, end - start, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memcpy(pages + (p->p_vaddr - start), elf + p->p_offset, p->p_filesz);
        int prot = (p->p_flags & PF_R ? PROT_READ : 0) | (p->p_flags & PF_W ? PROT_WRITE : 0) |
                   (p->p_flags & PF_X ? PROT_EXEC : 0);
        secinfo[0] = first ? 0x100 : (0x200 | (uint64_t)prot);
        add = (struct sgx_enclave_add_pages){(uint64_t)pages, start, end - start,
                                             (uint64_t)secinfo, 1, 0};
        if (first) {
            /* A TCS takes no permissions; a misaligned source is refused. */
            uint64_t bad[8] __attribute__((aligned(64))) = {0x101};
            struct sgx_enclave_add_pages wrong = add;
            wrong.secinfo = (uint64_t)bad;
            CHECK("add tcs with permissions", ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &wrong) == -1
                  && errno == EINVAL, "errno %d", errno);
            wrong = add;
            wrong.src += 8;
            CHECK("add misaligned source", ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &wrong) == -1 &&
                  errno == EINVAL, "errno %d", errno);
        }
        int ret = ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add);
        char name[64];
        snprintf(name, sizeof(name), "add segment %d", nseg);
        CHECK(name, ret == 0 && add.count == end - start, "ret %d errno %d count %lu", ret,
              errno, (unsigned long)add.count);
        if (first) {
            add.count = 0;
            add.length = PAGE;
            CHECK("add twice", ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add) == -1 &&
                  errno == EBUSY && add.count == 0, "errno %d count %lu", errno,
                  (unsigned long)add.count);
        }
        seg_start[nseg] = start;
        seg_end[nseg] = end;
        seg_prot[nseg++] = first ? PROT_READ | PROT_WRITE : prot;
        munmap(pages, end - start);
        first = 0;
    }
    uint64_t heap_start = seg_end[nseg - 1];
    if (heap_pages) {
        uint8_t *heap = mmap(NULL, heap_pages * PAGE, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        secinfo[0] = 0x203;
        add = (struct sgx_enclave_add_pages){(uint64_t)heap, heap_start, heap_pages * PAGE,
                                             (uint64_t)secinfo, 0, 0};
        CHECK("add heap", ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add) == 0 &&
              add.count == heap_pages * PAGE, "errno %d", errno);
        seg_start[nseg] = heap_start;
        seg_end[nseg] = heap_start + heap_pages * PAGE;
        seg_prot[nseg++] = PROT_READ | PROT_WRITE;
    }

    static uint8_t sig_copy[1808];
    memcpy(sig_copy, sigstruct, 1808);
    sig_copy[16] = 1;  /* VENDOR must be 0 or 0x8086 */
    uint64_t init_arg = (uint64_t)sig_copy;
    CHECK("init bad vendor", ioctl(fd, SGX_IOC_ENCLAVE_INIT, &init_arg) == -1 && errno == EINVAL,
          "errno %d", errno);
    memcpy(sig_copy, sigstruct, 1808);
    sig_copy[960] ^= 1;  /* ENCLAVEHASH: EINIT fails, the ioctl says EPERM */
    init_arg = (uint64_t)sig_copy;
    CHECK("init wrong measurement", ioctl(fd, SGX_IOC_ENCLAVE_INIT, &init_arg) == -1 &&
          errno == EPERM, "errno %d", errno);
    init_arg = (uint64_t)sigstruct;
    CHECK("init", ioctl(fd, SGX_IOC_ENCLAVE_INIT, &init_arg) == 0, "errno %d", errno);
    CHECK("init twice", ioctl(fd, SGX_IOC_ENCLAVE_INIT, &init_arg) == -1 && errno == EINVAL,
          "errno %d", errno);
    CHECK("add after init", ioctl(fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add) == -1 && errno == EINVAL,
          "errno %d", errno);
    memset(&restrict_arg, 0, sizeof(restrict_arg));
    CHECK("zeroed restrict probe", ioctl(fd, SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS,
                                         &restrict_arg) == -1 && errno == EINVAL, "errno %d",
          errno);
    restrict_arg = (struct sgx_enclave_restrict_permissions){0, PAGE, 1, 0, 0};
    CHECK("restrict a tcs", ioctl(fd, SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, &restrict_arg) == -1
          && errno == EINVAL && restrict_arg.count == 0 && restrict_arg.result == 0,
          "errno %d", errno);

    /* Map as the enclave consumer: each segment with its protections. */
    int text = 1;
    errno = 0;
    CHECK("map above the pages' rights",
          mmap((void *)(base + seg_start[text]), PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
               MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED && errno == EACCES, "errno %d", errno);
    int mapped = 1;
    for (int i = 0; i < nseg; i++)
        mapped &= mmap((void *)(base + seg_start[i]), seg_end[i] - seg_start[i], seg_prot[i],
                       MAP_SHARED | MAP_FIXED, fd, 0) != MAP_FAILED;
    CHECK("map segments", mapped, "errno %d", errno);
    errno = 0;
    CHECK("mprotect above the pages' rights",
          mprotect((void *)(base + seg_start[2]), PAGE, PROT_READ | PROT_WRITE | PROT_EXEC) == -1 &&
          errno == EACCES, "errno %d", errno);
    CHECK("mprotect length 0", mprotect((void *)(base + seg_start[2]), 0, PROT_READ) == 0,
          "errno %d", errno);
    errno = 0;
    CHECK("map outside ELRANGE after init",
          mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EACCES,
          "errno %d", errno);

    vdso_enter = (vdso_enter_t)vdso_symbol("__vdso_sgx_enter_enclave");
    CHECK("vdso symbol", vdso_enter != NULL, "not found through DT_HASH");
    if (vdso_enter == NULL)
        return failures;
    uint64_t tcs0 = base, tcs1 = base + PAGE, tcs2 = base + 2 * PAGE, tcs3 = base + 3 * PAGE;
    struct sgx_enclave_run run;
    uint64_t op[8] = {OP_NOP};
    CHECK("bad leaf", call(tcs0, op, &run, 5) == -EINVAL, "not -EINVAL");
    memset(&run, 0, sizeof(run));
    run.tcs = tcs0;
    run.reserved[100] = 1;
    CHECK("reserved not zero", enter((unsigned long)op, 0, 0, EENTER, 0, 0, &run) == -EINVAL,
          "not -EINVAL");

    CHECK("put and get", put_buffer(tcs0, 0x1122334455667788ull) &&
          get_buffer(tcs1) == 0x1122334455667788ull, "the value did not come back");

    /* More pages in one entry than the fast path keeps between entries:
       each later entry still reads what the program wrote since. */
    enum { TOUCHED = 200 };
    uint64_t *touched = mmap(NULL, TOUCHED * PAGE, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fresh = touched != MAP_FAILED;
    uint64_t sums[3] = {0};
    for (uint64_t value = 1; fresh && value <= 3; value++) {
        for (int i = 0; i < TOUCHED; i++)
            touched[i * (PAGE / 8)] = value;
        uint64_t touch[8] = {OP_TOUCH, (uint64_t)touched, TOUCHED};
        fresh = call(tcs0, touch, &run, EENTER) == 0 && run.function == EEXIT;
        sums[value - 1] = touch[3];
        fresh &= touch[3] == value * TOUCHED;
    }
    CHECK("pages read afresh", fresh, "sums %lu %lu %lu", (unsigned long)sums[0],
          (unsigned long)sums[1], (unsigned long)sums[2]);

    /* A page kept between entries whose rights the program changes: made
       read-only, the next write is #PF 0x7 (not lost); made writable, the
       next write lands. */
    uint64_t *kept = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                          -1, 0);
    uint64_t put_kept[8] = {OP_PUT_ADDRESS, 0x11, (uint64_t)kept};
    int wrote = call(tcs0, put_kept, &run, EENTER) == 0 && run.function == EEXIT &&
                kept[0] == 0x11;
    mprotect(kept, PAGE, PROT_READ);
    put_kept[1] = 0x22;
    int refused = call(tcs0, put_kept, &run, EENTER) == 0 && run.function == ERESUME &&
                  run.exception_vector == 14 && run.exception_error_code == 0x7;
    mprotect(kept, PAGE, PROT_READ | PROT_WRITE);
    int resumed = refused && call(tcs0, put_kept, &run, ERESUME) == 0 &&
                  run.function == EEXIT && kept[0] == 0x22;
    CHECK("kept page made read-only", wrote && refused && resumed,
          "wrote %d refused %d (vector %u code %#x) resumed %d value %#lx", wrote, refused,
          run.exception_vector, run.exception_error_code, resumed, (unsigned long)kept[0]);
    mprotect(kept, PAGE, PROT_READ);
    uint64_t get_kept[8] = {OP_GET_ADDRESS, 0, (uint64_t)kept};
    int read_it = call(tcs0, get_kept, &run, EENTER) == 0 && get_kept[1] == 0x22;
    mprotect(kept, PAGE, PROT_READ | PROT_WRITE);
    put_kept[1] = 0x33;
    CHECK("kept page made writable", read_it && call(tcs0, put_kept, &run, EENTER) == 0 &&
          run.function == EEXIT && kept[0] == 0x33, "function %u vector %u value %#lx",
          run.function, run.exception_vector, (unsigned long)kept[0]);

    /* Every client slot in use (the op page O, the touch's op page and 254
       pages), then a page the library's maps still show but that is gone
       (unmapped by a raw system call, as glibc's free() does past the
       interposed munmap): the slot taken for it (O's) is unmapped too, and
       later entries read and write O afresh. On tcs2: no page kept yet. */
    enum { SPREAD = 255 };
    uint8_t *spread = mmap(NULL, (SPREAD + 2) * PAGE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *op_o = (uint64_t *)spread, *op_touch = (uint64_t *)(spread + PAGE);
    uint8_t *spread_pages = spread + 2 * PAGE;
    for (int i = 0; i < SPREAD; i++)
        ((uint64_t *)(spread_pages + i * PAGE))[0] = 1;
    for (int i = 0; i < 3; i++) {
        op_o[0] = OP_NOP;
        call(tcs2, op_o, &run, EENTER);
    }
    uint8_t *gone_page = spread_pages + (SPREAD - 1) * PAGE;
    syscall(SYS_munmap, gone_page, PAGE);
    memset(op_touch, 0, 64);
    op_touch[0] = OP_TOUCH;
    op_touch[1] = (uint64_t)spread_pages;
    op_touch[2] = SPREAD;
    int faulted = call(tcs2, op_touch, &run, EENTER) == 0 && run.function == ERESUME &&
                  run.exception_vector == 14;
    mmap(gone_page, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    ((uint64_t *)gone_page)[0] = 1;
    int touched_all = faulted && call(tcs2, op_touch, &run, ERESUME) == 0 &&
                      run.function == EEXIT && op_touch[3] == SPREAD;
    memset(op_o, 0, 64);
    op_o[0] = OP_PUT_BUFFER;
    op_o[1] = 0x7777;
    int put_o = call(tcs2, op_o, &run, EENTER) == 0 && run.function == EEXIT;
    uint64_t got_o = get_buffer(tcs1);
    memset(op_o, 0, 64);
    op_o[0] = OP_GET_BUFFER;
    int get_o = call(tcs2, op_o, &run, EENTER) == 0 && op_o[1] == 0x7777;
    CHECK("slot taken for a gone page", touched_all && put_o && got_o == 0x7777 && get_o,
          "faulted %d touched %d (sum %lu) put %d buffer %#lx got %#lx", faulted, touched_all,
          (unsigned long)op_touch[3], put_o, (unsigned long)got_o, (unsigned long)op_o[1]);

    memset(&run, 0, sizeof(run));
    run.tcs = tcs0;
    run.user_handler = (uint64_t)exit_handler;
    run.user_data = 0xdeadbeef;
    uint64_t nop[8] = {OP_NOP};
    int ret = enter((unsigned long)nop, 0, 0, EENTER, 0, 0, &run);
    CHECK("user handler", ret == 0 && handler_calls == 1 && run.user_data == 0 &&
          run.function == EEXIT, "ret %d calls %d", ret, handler_calls);

    uint64_t divide[8] = {OP_DIVIDE, 10, 0};
    ret = call(tcs2, divide, &run, EENTER);
    CHECK("exception", ret == 0 && run.function == ERESUME && run.exception_vector == 0 &&
          run.exception_error_code == 0, "ret %d function %u vector %u", ret, run.function,
          run.exception_vector);

    /* The page tables: a page made read-only from outside gives #PF 0x7 to
       a write; made writable again, ERESUME completes the write. */
    uint64_t data_page = base + seg_start[2];
    mprotect((void *)data_page, PAGE, PROT_READ);
    uint64_t put[8] = {OP_PUT_ADDRESS, 0xabcdef, data_page};
    ret = call(tcs0, put, &run, EENTER);
    CHECK("pte fault", ret == 0 && run.function == ERESUME && run.exception_vector == 14 &&
          run.exception_error_code == 0x7 && run.exception_addr == data_page,
          "function %u vector %u code %#x addr %#lx", run.function, run.exception_vector,
          run.exception_error_code, (unsigned long)run.exception_addr);
    mprotect((void *)data_page, PAGE, PROT_READ | PROT_WRITE);
    ret = call(tcs0, put, &run, ERESUME);
    uint64_t get[8] = {OP_GET_ADDRESS, 0, data_page};
    CHECK("eresume", ret == 0 && run.function == EEXIT && call(tcs0, get, &run, EENTER) == 0 &&
          get[1] == 0xabcdef, "function %u value %#lx", run.function, (unsigned long)get[1]);

    /* Two threads in the enclave at once. */
    pthread_t threads[2];
    pthread_create(&threads[0], NULL, thread_body, (void *)tcs0);
    pthread_create(&threads[1], NULL, thread_body, (void *)tcs3);
    void *r0, *r1;
    pthread_join(threads[0], &r0);
    pthread_join(threads[1], &r1);
    CHECK("threads", r0 == NULL && r1 == NULL, "a thread failed");

    /* A hole of ELRANGE: unmapped, a touch is a #PF for the program; mapped
       by the program, the fault adds a page (EAUG) that the enclave must
       EACCEPT. */
    if (image_end + PAGE <= size) {
        uint64_t hole = base + image_end;
        uint64_t touch[8] = {OP_GET_ADDRESS, 0, hole};
        ret = call(tcs0, touch, &run, EENTER);
        CHECK("unmapped hole", ret == 0 && run.function == ERESUME && run.exception_vector == 14,
              "function %u vector %u", run.function, run.exception_vector);
        void *page = mmap((void *)hole, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                          fd, 0);
        uint64_t write_hole[8] = {OP_PUT_ADDRESS, 0x5a5a, hole};
        ret = call(tcs1, write_hole, &run, EENTER);
        CHECK("eaug on a mapped hole", page != MAP_FAILED && ret == 0 && run.function == ERESUME
              && run.exception_vector == 14 && run.exception_error_code == 0x8007,
              "function %u vector %u code %#x", run.function, run.exception_vector,
              run.exception_error_code);
        uint64_t accept[8] = {OP_EACCEPT, hole, 0x1 | 0x2 | 0x200 | 0x8 /* PENDING */};
        ret = call(tcs3, accept, &run, EENTER);
        CHECK("eaccept", ret == 0 && run.function == EEXIT && accept[3] == 0, "ret %lu",
              (unsigned long)accept[3]);
        ret = call(tcs1, write_hole, &run, ERESUME);
        uint64_t read_hole[8] = {OP_GET_ADDRESS, 0, hole};
        CHECK("augmented page", ret == 0 && run.function == EEXIT &&
              call(tcs3, read_hole, &run, EENTER) == 0 && read_hole[1] == 0x5a5a,
              "value %#lx", (unsigned long)read_hole[1]);
        /* Unmapped again by the program: the next entry's touch is a #PF
           (the library only queues the UNMAP, and sends it before any
           entry); mapped again, ERESUME completes the read of the page the
           enclave kept. */
        munmap((void *)hole, PAGE);
        uint64_t read_unmapped[8] = {OP_GET_ADDRESS, 0, hole};
        ret = call(tcs1, read_unmapped, &run, EENTER);
        int faulted = ret == 0 && run.function == ERESUME && run.exception_vector == 14;
        page = mmap((void *)hole, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        ret = call(tcs1, read_unmapped, &run, ERESUME);
        CHECK("hole unmapped and mapped again", faulted && page != MAP_FAILED && ret == 0 &&
              run.function == EEXIT && read_unmapped[1] == 0x5a5a, "faulted %d value %#lx",
              faulted, (unsigned long)read_unmapped[1]);
    } else {
        printf("skip eaug: no hole in ELRANGE\n");
    }

    /* Raw ENCLU: an EEXIT resumes after it; an AEX is the kernel's signal
       at the AEP with RAX = ERESUME. The program's own SIGILL handler still
       sees its own #UD. */
    struct sigaction action = {0}, previous;
    action.sa_sigaction = raw_handler;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGFPE, &action, &previous);
    uint64_t raw_put[8] = {OP_PUT_BUFFER, 0x600d};
    raw_enter(tcs3, raw_put);
    uint64_t raw_get[8] = {OP_GET_BUFFER, 0};
    raw_enter(tcs3, raw_get);
    CHECK("raw enclu", raw_get[1] == 0x600d && raw_signal == 0, "value %#lx signal %d",
          (unsigned long)raw_get[1], raw_signal);
    uint64_t raw_divide[8] = {OP_DIVIDE, 10, 0};
    raw_enter(tcs1, raw_divide);
    CHECK("raw enclu aex", raw_signal == SIGFPE && raw_rip == (uint64_t)raw_aep && raw_rax == 3 &&
          raw_rbx == tcs1, "signal %d rip %#lx rax %lu", raw_signal, (unsigned long)raw_rip,
          (unsigned long)raw_rax);
    sigaction(SIGFPE, &previous, NULL);
    struct sigaction own = {0};
    own.sa_sigaction = own_sigill_handler;
    own.sa_flags = SA_SIGINFO;
    sigaction(SIGILL, &own, NULL);
    __asm__ volatile("ud2");
    CHECK("program's own sigill", own_sigill == 1, "handler calls %d", own_sigill);

    /* The enclave outlives its descriptor while it is mapped. */
    close(fd);
    CHECK("after close", put_buffer(tcs3, 77) && get_buffer(tcs3) == 77, "the enclave is gone");
    munmap((void *)base, size);
    uint64_t gone[8] = {OP_NOP};
    ret = call(tcs3, gone, &run, EENTER);
    CHECK("after munmap", ret == 0 && run.function == EENTER && run.exception_vector == 14,
          "ret %d function %u vector %u", ret, run.function, run.exception_vector);
    printf("done %d failures\n", failures);
    return failures;
}
