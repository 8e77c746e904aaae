/* A small host written for vsgx's tests that runs an SDK-format enclave the
   way Intel's urts does on the in-kernel driver: probe the device nodes,
   reserve ELRANGE, SGX_IOC_ENCLAVE_CREATE, one ADD_PAGES per page, INIT,
   mmap each run of equal protection, find __vdso_sgx_enter_enclave through
   the vDSO's section headers, ECMD_INIT_ENCLAVE, then ECALLs whose OCALLs
   (ECMD_ORET) and exceptions (ECMD_EXCEPT, then ERESUME) are served from
   the vDSO's user handler. Destroying is close(fd), then munmap.

   The layout comes from a plan file that vsgx's test writes from the
   enclave's build plan (Intel's urts computes the same from the metadata);
   the ECALL and OCALL ordinals come on the command line.

   usage: urts_host PLAN ECALL_HELLO ECALL_ADD ECALL_OCALL_NOP ECALL_FAULT
                    OCALL_PRINT OCALL_NOP
   Prints "ok NAME" / "FAIL NAME: why"; the exit status counts failures.
          urts_host --bench COUNT ECALL_NOP PLAN ... (the same ordinals)
   prints, for benchmarks/exec.py, the creation time of the enclave and
   COUNT null ECALL and null OCALL latencies (ns);
          urts_host --sigill COUNT
   prints COUNT #UD -> SIGILL -> return round trips (ns);
          urts_host --ra PLAN ECALL_RA_BEGIN OUTDIR
   loads the sample and quotes its ecall_ra_begin REPORT twice, as DCAP
   applications do: through Intel's quote library API (libsgx_dcap_ql.so.1,
   dlopen'ed by its SONAME so that the other modes need no library), and
   through the aesmd socket ($VSGX_AESM_SOCKET, else Intel's path) with
   SelectAttKeyID, InitQuoteEx, GetQuoteSizeEx and GetQuoteEx. Writes OUTDIR/dcap.quote,
   dcap.key, aesm.quote and aesm.key (the enclave's public key). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <ucontext.h>

#define PAGE 4096UL
#define SGX_IOC_ENCLAVE_CREATE 0x4008a400UL
#define SGX_IOC_ENCLAVE_ADD_PAGES 0xc030a401UL
#define SGX_IOC_ENCLAVE_INIT 0x4008a402UL
#define EENTER 2
#define ERESUME 3
#define EEXIT 4
#define ECMD_INIT_ENCLAVE (-1)
#define ECMD_ORET (-2)
#define ECMD_EXCEPT (-3)
#define OCMD_ERET (-1)
#define SGX_ERROR_ENCLAVE_LOST 0x4
#define SGX_ERROR_UNEXPECTED 0x1

struct plan_header {
    char magic[8];
    uint64_t size, ssaframesize, attributes, xfrm, miscselect;
    uint64_t runs, tcs_count, runs_at, tcs_at, sigstruct_at, features_at, features_size;
};
struct plan_run {
    uint64_t offset, count, secinfo, measured, data_at, fill;
};
struct sgx_enclave_add_pages { uint64_t src, offset, length, secinfo, flags, count; };
struct sgx_enclave_run {
    uint64_t tcs;
    uint32_t function;
    uint16_t exception_vector, exception_error_code;
    uint64_t exception_addr, user_handler, user_data;
    uint8_t reserved[216];
};

struct enclave {
    int fd;
    uint64_t base, size;
    uint64_t tcs[16];
    int tcs_count;
};

struct call {
    struct enclave *enclave;
    uint64_t tcs;
    uint32_t status;
    int exceptions;
};

static int failures;
static uint8_t *plan;
static long ecall_hello, ecall_add, ecall_ocall_nop, ecall_fault, ocall_print, ocall_nop;
static char printed[512];
static int ocalls;
static uint64_t *stamps;
static long stamp_count, stamp_limit;
static pthread_mutex_t ocall_lock = PTHREAD_MUTEX_INITIALIZER;

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

/* The vDSO function, found as Intel's urts finds it: through the section
   headers (.shstrtab, .dynsym, .dynstr). */
static void *vdso_symbol(const char *wanted)
{
    char *vdso = (char *)getauxval(AT_SYSINFO_EHDR);
    if (vdso == NULL)
        return NULL;
    Elf64_Ehdr *ehdr = (Elf64_Ehdr *)vdso;
    Elf64_Shdr *sections = (Elf64_Shdr *)(vdso + ehdr->e_shoff);
    const char *names = vdso + sections[ehdr->e_shstrndx].sh_offset;
    Elf64_Shdr *dynsym = NULL, *dynstr = NULL;
    for (int i = 0; i < ehdr->e_shnum; i++) {
        if (!strcmp(names + sections[i].sh_name, ".dynsym"))
            dynsym = &sections[i];
        if (!strcmp(names + sections[i].sh_name, ".dynstr"))
            dynstr = &sections[i];
    }
    if (dynsym == NULL || dynstr == NULL || dynsym->sh_entsize == 0)
        return NULL;
    Elf64_Sym *symbols = (Elf64_Sym *)(vdso + dynsym->sh_offset);
    for (uint64_t i = 0; i < dynsym->sh_size / dynsym->sh_entsize; i++)
        if (!strcmp(vdso + dynstr->sh_offset + symbols[i].st_name, wanted))
            return vdso + symbols[i].st_value;
    return NULL;
}

typedef int (*vdso_enter_t)(long, long, long, unsigned int, long, long, struct sgx_enclave_run *);
static vdso_enter_t vdso_enter;

/* Callee-saved registers survive the call (the vDSO keeps RBX and RBP). */
int enter(long rdi, long rsi, long rdx, unsigned int function, long r8, long r9,
          struct sgx_enclave_run *run);
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

static int run_ecall(struct enclave *enclave, uint64_t tcs, long index, void *ms,
                     int *exceptions);

/* The vDSO's user handler, in C behind the assembly below: the handler's
   return value says what happens next, and for a re-entry RDI and RSI are
   what it leaves in them (ECMD_ORET and the OCALL's status). */
long urts_exit(long rdi, long rsi, struct sgx_enclave_run *run, long *next)
{
    struct call *call = (struct call *)run->user_data;
    if (run->function == EEXIT) {
        if (rdi == OCMD_ERET) {
            call->status = (uint32_t)rsi;
            return 0;
        }
        uint32_t status = 0;
        pthread_mutex_lock(&ocall_lock);
        ocalls++;
        if (stamps != NULL && stamp_count < stamp_limit) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            stamps[stamp_count++] = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
        }
        if (rdi == ocall_print) {
            const char *text = *(const char **)rsi;
            snprintf(printed, sizeof(printed), "%s", text ? text : "(null)");
        } else if (rdi != ocall_nop) {
            status = 0x1;  /* SGX_ERROR_UNEXPECTED: an OCALL this host lacks */
        }
        pthread_mutex_unlock(&ocall_lock);
        next[0] = ECMD_ORET;
        next[1] = status;
        return EENTER;
    }
    if (run->function == EENTER) {
        call->status = SGX_ERROR_ENCLAVE_LOST;  /* the EENTER itself faulted */
        return 0;
    }
    /* An AEX: the enclave's own handlers get it through ECMD_EXCEPT on the
       same TCS, then the interrupted code resumes. */
    call->exceptions++;
    int nested = 0;
    int status = run_ecall(call->enclave, call->tcs, ECMD_EXCEPT, NULL, &nested);
    if (status != 0) {
        call->status = (uint32_t)status;
        return 0;
    }
    next[0] = 0;
    next[1] = 0;
    return ERESUME;
}

long urts_handler(long, long, long, long, long, long, struct sgx_enclave_run *);
__asm__(".text\n"
        ".globl urts_handler\n"
        "urts_handler:\n"
        "    push %rbp\n"
        "    mov %rsp, %rbp\n"
        "    sub $32, %rsp\n"
        "    mov 16(%rbp), %rdx\n"
        "    lea -32(%rbp), %rcx\n"
        "    call urts_exit\n"
        "    mov -32(%rbp), %rdi\n"
        "    mov -24(%rbp), %rsi\n"
        "    leave\n"
        "    ret\n");

static int run_ecall(struct enclave *enclave, uint64_t tcs, long index, void *ms,
                     int *exceptions)
{
    struct call call = {enclave, tcs, SGX_ERROR_UNEXPECTED, 0};
    struct sgx_enclave_run run;
    memset(&run, 0, sizeof(run));
    run.tcs = tcs;
    run.user_handler = (uint64_t)urts_handler;
    run.user_data = (uint64_t)&call;
    int ret = enter(index, (long)ms, 0, EENTER, 0, 0, &run);
    if (exceptions)
        *exceptions += call.exceptions;
    if (ret != 0)
        return -1;
    return (int)call.status;
}

/* -- loading, as urts does on the in-kernel driver -------------------------- */
static uint64_t now_ns(void);
/* When each step of the last load ended (ns): probes and open, CREATE, the
   ADD_PAGES, INIT, the mappings, ECMD_INIT_ENCLAVE. */
static uint64_t load_steps[6];

static int load(struct enclave *enclave)
{
    struct plan_header *h = (struct plan_header *)plan;
    /* get_driver_type's probes */
    for (int i = 0; i < 8; i++) {
        int probe = open("/dev/sgx/enclave", O_RDWR);
        if (probe < 0)
            return -1;
        close(probe);
    }
    enclave->fd = open("/dev/sgx/enclave", O_RDWR);
    if (enclave->fd < 0)
        return -1;
    load_steps[0] = now_ns();
    uint64_t size = h->size;
    uint8_t *area = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
    if (area == MAP_FAILED)
        return -1;
    uint64_t base = ((uint64_t)area + size - 1) & ~(size - 1);
    if (base > (uint64_t)area)
        munmap(area, base - (uint64_t)area);
    if ((uint64_t)area + 2 * size > base + size)
        munmap((void *)(base + size), (uint64_t)area + 2 * size - base - size);
    enclave->base = base;
    enclave->size = size;
    static uint8_t secs[4096] __attribute__((aligned(4096)));
    memset(secs, 0, sizeof(secs));
    memcpy(secs, &size, 8);
    memcpy(secs + 8, &base, 8);
    uint32_t ssa = (uint32_t)h->ssaframesize, misc = (uint32_t)h->miscselect;
    memcpy(secs + 16, &ssa, 4);
    memcpy(secs + 20, &misc, 4);
    memcpy(secs + 48, &h->attributes, 8);
    memcpy(secs + 56, &h->xfrm, 8);
    uint64_t create = (uint64_t)secs;
    if (ioctl(enclave->fd, SGX_IOC_ENCLAVE_CREATE, &create) != 0)
        return -2;
    load_steps[1] = now_ns();
    struct plan_run *runs = (struct plan_run *)(plan + h->runs_at);
    static uint8_t page[4096] __attribute__((aligned(4096)));
    for (uint64_t r = 0; r < h->runs; r++) {
        uint64_t secinfo[8] __attribute__((aligned(64))) = {runs[r].secinfo};
        for (uint64_t i = 0; i < runs[r].count; i++) {
            if (runs[r].data_at != ~0ull) {
                memcpy(page, plan + runs[r].data_at + i * PAGE, PAGE);
            } else {
                uint32_t fill = (uint32_t)runs[r].fill;
                for (int w = 0; w < 1024; w++)
                    memcpy(page + 4 * w, &fill, 4);
            }
            struct sgx_enclave_add_pages add = {(uint64_t)page, runs[r].offset + i * PAGE, PAGE,
                                                (uint64_t)secinfo, runs[r].measured ? 1 : 0, 0};
            if (ioctl(enclave->fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add) != 0 || add.count != PAGE)
                return -3;
        }
    }
    load_steps[2] = now_ns();
    uint64_t init = (uint64_t)(plan + h->sigstruct_at);
    if (ioctl(enclave->fd, SGX_IOC_ENCLAVE_INIT, &init) != 0)
        return -4;
    load_steps[3] = now_ns();
    /* Map each run of pages with its protection (TCS pages RW); pages never
       added stay PROT_NONE (guards). */
    for (uint64_t r = 0; r < h->runs; r++) {
        int tcs = ((runs[r].secinfo >> 8) & 0xff) == 1;
        int prot = tcs ? PROT_READ | PROT_WRITE : (int)(runs[r].secinfo & 7);
        if (mmap((void *)(base + runs[r].offset), runs[r].count * PAGE, prot,
                 MAP_SHARED | MAP_FIXED, enclave->fd, 0) == MAP_FAILED)
            return -5;
    }
    load_steps[4] = now_ns();
    uint64_t *tcs = (uint64_t *)(plan + h->tcs_at);
    enclave->tcs_count = (int)h->tcs_count;
    for (int i = 0; i < enclave->tcs_count && i < 16; i++)
        enclave->tcs[i] = base + tcs[i];
    /* ECMD_INIT_ENCLAVE with the system_features_t vsgx's urts hands out. */
    void *features = malloc(h->features_size);
    memcpy(features, plan + h->features_at, h->features_size);
    int status = run_ecall(enclave, enclave->tcs[0], ECMD_INIT_ENCLAVE, features, NULL);
    free(features);
    load_steps[5] = now_ns();
    return status == 0 ? 0 : -6;
}

static void destroy(struct enclave *enclave)
{
    close(enclave->fd);
    munmap((void *)enclave->base, enclave->size);
}

static int add(struct enclave *enclave, uint64_t tcs, int a, int b, int *sum)
{
    struct { int retval, a, b; } ms = {0, a, b};
    int status = run_ecall(enclave, tcs, ecall_add, &ms, NULL);
    *sum = ms.retval;
    return status;
}

static sigjmp_buf bus_jump;
static volatile int bus_seen;

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    (void)sig, (void)info, (void)context;
    bus_seen++;
    siglongjmp(bus_jump, 1);
}

/* ECALLs whose marshalling struct lives in a page of its own, which the
   fast path keeps for the next entry; then the page goes (munmap) or loses
   its backing (a truncated file: SIGBUS). The next entry runs on, and the
   program's own SIGBUS handler still gets the program's own fault. */
static void kept_pages_go_away(struct enclave *e)
{
    struct add_ms { int retval, a, b; };
    int sum = 0;
    struct add_ms *anon = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                               -1, 0);
    *anon = (struct add_ms){0, 20, 1};
    int first = run_ecall(e, e->tcs[0], ecall_add, anon, NULL), first_sum = anon->retval;
    munmap(anon, PAGE);
    int second = add(e, e->tcs[0], 2, 3, &sum);
    CHECK("kept page unmapped", first == 0 && first_sum == 21 && second == 0 && sum == 5,
          "status %#x then %#x, sums %d %d", first, second, first_sum, sum);

    char path[] = "/tmp/urts_host_XXXXXX";
    int f = mkstemp(path);
    unlink(path);
    struct add_ms *file = MAP_FAILED;
    if (f >= 0 && ftruncate(f, PAGE) == 0)
        file = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    if (file == MAP_FAILED) {
        CHECK("kept page truncated", 0, "no file mapping: errno %d", errno);
        return;
    }
    *file = (struct add_ms){0, 30, 2};
    first = run_ecall(e, e->tcs[0], ecall_add, file, NULL);
    first_sum = file->retval;
    int truncated = ftruncate(f, 0);
    sum = 0;
    second = add(e, e->tcs[0], 4, 5, &sum);
    struct sigaction action, previous;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &action, &previous);
    bus_seen = 0;
    if (sigsetjmp(bus_jump, 1) == 0)
        (void)*(volatile int *)&file->retval;
    sigaction(SIGBUS, &previous, NULL);
    CHECK("kept page truncated", truncated == 0 && first == 0 && first_sum == 32 &&
          second == 0 && sum == 9 && bus_seen == 1,
          "status %#x then %#x, sums %d %d, program's SIGBUS seen %d times", first, second,
          first_sum, sum, bus_seen);
    munmap(file, PAGE);
    close(f);
}

static void *adder(void *argument)
{
    struct { struct enclave *enclave; uint64_t tcs; int ok; } *job = argument;
    job->ok = 1;
    for (int i = 0; i < 30; i++) {
        int sum = 0;
        if (add(job->enclave, job->tcs, i, 1000, &sum) != 0 || sum != i + 1000)
            job->ok = 0;
    }
    return NULL;
}

static uint8_t *read_plan(const char *path)
{
    int f = open(path, O_RDONLY);
    if (f < 0)
        return NULL;
    struct stat st;
    fstat(f, &st);
    uint8_t *data = malloc((size_t)st.st_size);
    size_t done = 0;
    while (done < (size_t)st.st_size) {
        ssize_t n = read(f, data + done, (size_t)st.st_size - done);
        if (n <= 0)
            return NULL;
        done += (size_t)n;
    }
    close(f);
    return memcmp(data, "VSGXPLN1", 8) ? NULL : data;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void skip_ud2(int sig, siginfo_t *info, void *context)
{
    ((ucontext_t *)context)->uc_mcontext.gregs[REG_RIP] += 2;
}

static int sigill_round_trips(long count)
{
    struct sigaction action = {0};
    action.sa_sigaction = skip_ud2;
    action.sa_flags = SA_SIGINFO;
    sigaction(SIGILL, &action, NULL);
    for (long i = 0; i < count + 100; i++) {
        uint64_t start = now_ns();
        __asm__ volatile("ud2");
        uint64_t end = now_ns();
        if (i >= 100)
            printf("sigill %lu\n", (unsigned long)(end - start));
    }
    return 0;
}

static void print_steps(uint64_t start)
{
    printf("steps");
    for (int i = 0; i < 6; i++) {
        printf(" %lu", (unsigned long)(load_steps[i] - start));
        start = load_steps[i];
    }
    printf("\n");
}

static int bench(long count, long ecall_nop, struct enclave *e)
{
    uint64_t start = now_ns();
    int ret = load(e);
    printf("create %lu\n", (unsigned long)(now_ns() - start));
    print_steps(start);
    if (ret != 0)
        return 1;
    for (long i = 0; i < count + 100; i++) {
        start = now_ns();
        int status = run_ecall(e, e->tcs[0], ecall_nop, NULL, NULL);
        uint64_t end = now_ns();
        if (status != 0)
            return 1;
        if (i >= 100)
            printf("ecall %lu\n", (unsigned long)(end - start));
    }
    stamp_limit = count + 1;
    stamps = calloc((size_t)stamp_limit, sizeof(uint64_t));
    struct { int retval; int count; } ms = {0, (int)stamp_limit};
    if (run_ecall(e, e->tcs[0], ecall_ocall_nop, &ms, NULL) != 0)
        return 1;
    /* Between two OCALL handler calls: ECMD_ORET, the enclave's loop, the
       next OCALL's EEXIT: one OCALL round trip. */
    for (long i = 1; i < stamp_count; i++)
        printf("ocall %lu\n", (unsigned long)(stamps[i] - stamps[i - 1]));
    start = now_ns();
    destroy(e);
    printf("destroy %lu\n", (unsigned long)(now_ns() - start));
    start = now_ns();
    ret = load(e);
    printf("create %lu\n", (unsigned long)(now_ns() - start));
    print_steps(start);
    return ret != 0;
}

/* -- remote attestation: a quote of the sample's ecall_ra_begin REPORT ------------ */
static int write_file(const char *dir, const char *name, const void *data, size_t size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, size, f) == size;
    if (f && fclose(f) != 0)
        ok = 0;
    return ok;
}

/* ecall_ra_begin(qe_target_info, report, public_key) */
static int ra_begin(struct enclave *e, long ordinal, const uint8_t target[512],
                    uint8_t report[432], uint8_t key[32])
{
    struct { uint32_t retval; const void *target; void *report; uint8_t *key; } ms = {
        0xffffffff, target, report, key};
    int status = run_ecall(e, e->tcs[0], ordinal, &ms, NULL);
    return status ? status : (int)ms.retval;
}

typedef uint32_t (*qe_target_info_fn)(void *);
typedef uint32_t (*qe_quote_size_fn)(uint32_t *);
typedef uint32_t (*qe_quote_fn)(const void *, uint32_t, uint8_t *);

static void dcap_quote(struct enclave *e, long ordinal, const char *dir)
{
    void *library = dlopen("libsgx_dcap_ql.so.1", RTLD_NOW);
    CHECK("dlopen libsgx_dcap_ql.so.1", library != NULL, "%s", dlerror());
    if (library == NULL)
        return;
    qe_target_info_fn target_info = (qe_target_info_fn)dlsym(library, "sgx_qe_get_target_info");
    qe_quote_size_fn quote_size = (qe_quote_size_fn)dlsym(library, "sgx_qe_get_quote_size");
    qe_quote_fn get_quote = (qe_quote_fn)dlsym(library, "sgx_qe_get_quote");
    CHECK("dcap symbols", target_info && quote_size && get_quote, "missing");
    if (!target_info || !quote_size || !get_quote)
        return;
    static uint8_t target[512] __attribute__((aligned(512))), report[432], key[32];
    uint32_t status = target_info(target);
    CHECK("sgx_qe_get_target_info", status == 0, "%#x", status);
    int ecall = ra_begin(e, ordinal, target, report, key);
    CHECK("ecall_ra_begin for the dcap QE", ecall == 0, "%#x", ecall);
    uint32_t size = 0;
    status = quote_size(&size);
    CHECK("sgx_qe_get_quote_size", status == 0 && size > 1000, "%#x size %u", status, size);
    if (status || ecall || !size)
        return;
    uint8_t *quote = malloc(size);
    status = get_quote(report, size, quote);
    CHECK("sgx_qe_get_quote", status == 0, "%#x", status);
    if (status == 0)
        CHECK("dcap files", write_file(dir, "dcap.quote", quote, size) &&
              write_file(dir, "dcap.key", key, 32), "%s", strerror(errno));
    free(quote);
    dlclose(library);
}

/* The aesmd wire: a 4-byte little-endian length, then a protobuf
   aesm.message.Request with one request field (Intel's messages.proto). */
static size_t pb_varint(uint8_t *out, uint64_t value)
{
    size_t n = 0;
    for (; value > 0x7f; value >>= 7)
        out[n++] = (uint8_t)(value | 0x80);
    out[n++] = (uint8_t)value;
    return n;
}

static size_t pb_bytes(uint8_t *out, unsigned field, const void *data, size_t size)
{
    size_t n = pb_varint(out, field << 3 | 2);
    n += pb_varint(out + n, size);
    memcpy(out + n, data, size);
    return n + size;
}

static size_t pb_uint(uint8_t *out, unsigned field, uint64_t value)
{
    size_t n = pb_varint(out, field << 3);
    return n + pb_varint(out + n, value);
}

/* Field `want` of a message: 0 found (a varint's value, or bytes), 1 absent, -1 malformed. */
static int pb_field(const uint8_t *p, size_t size, unsigned want, uint64_t *value,
                    const uint8_t **data, size_t *data_size)
{
    const uint8_t *end = p + size;
    while (p < end) {
        uint64_t key = 0, v = 0;
        for (int shift = 0;; shift += 7) {
            if (p >= end || shift > 63)
                return -1;
            key |= (uint64_t)(*p & 0x7f) << shift;
            if (!(*p++ & 0x80))
                break;
        }
        if ((key & 7) != 0 && (key & 7) != 2)
            return -1;
        for (int shift = 0;; shift += 7) {
            if (p >= end || shift > 63)
                return -1;
            v |= (uint64_t)(*p & 0x7f) << shift;
            if (!(*p++ & 0x80))
                break;
        }
        if ((key & 7) == 2 && v > (uint64_t)(end - p))
            return -1;
        if (key >> 3 == want) {
            *value = v;
            *data = p;
            *data_size = (key & 7) == 2 ? (size_t)v : 0;
            return 0;
        }
        if ((key & 7) == 2)
            p += v;
    }
    return 1;
}

/* One request; the response's message `field` in *msg (inside *body, to free). */
static int aesm_ask(const char *socket_path, unsigned field, const uint8_t *inner, size_t size,
                    uint8_t **body, const uint8_t **msg, size_t *msg_size, uint32_t *code)
{
    static uint8_t request[8192];
    size_t n = pb_bytes(request, field, inner, size);
    uint8_t header[4] = {n & 0xff, n >> 8 & 0xff, n >> 16 & 0xff, n >> 24 & 0xff};
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    snprintf(address.sun_path, sizeof(address.sun_path), "%s", socket_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof(address)) != 0 ||
        write(fd, header, 4) != 4 || write(fd, request, n) != (ssize_t)n ||
        recv(fd, header, 4, MSG_WAITALL) != 4) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uint32_t length = header[0] | header[1] << 8 | header[2] << 16 | (uint32_t)header[3] << 24;
    *body = malloc(length ? length : 1);
    ssize_t got = recv(fd, *body, length, MSG_WAITALL);
    close(fd);
    uint64_t unused, status = ~0ull;
    const uint8_t *d;
    size_t ds;
    if (got != (ssize_t)length || pb_field(*body, length, field, &unused, msg, msg_size) != 0 ||
        pb_field(*msg, *msg_size, 1, &status, &d, &ds) != 0)
        return -1;
    *code = (uint32_t)status;
    return 0;
}

static void aesm_quote(struct enclave *e, long ordinal, const char *dir)
{
    const char *socket_path = getenv("VSGX_AESM_SOCKET");
    if (socket_path == NULL || !*socket_path)
        socket_path = "/var/run/aesmd/aesm.socket";
    uint8_t inner[1024], *body = NULL;
    const uint8_t *msg, *data;
    size_t msg_size, data_size, n;
    uint32_t code = ~0u;
    uint64_t value = 0;
    static uint8_t target[512] __attribute__((aligned(512))), report[432], key[32];
    static uint8_t key_id[256];
    /* SelectAttKeyID without a list: the attestation key aesmd offers. */
    int ok = aesm_ask(socket_path, 19, inner, 0, &body, &msg, &msg_size, &code) == 0 &&
             code == 0 && pb_field(msg, msg_size, 2, &value, &data, &data_size) == 0 &&
             data_size == sizeof(key_id);
    CHECK("SelectAttKeyID", ok, "status %u from %s", code, socket_path);
    if (!ok)
        return;
    memcpy(key_id, data, sizeof(key_id));
    free(body);
    n = pb_bytes(inner, 1, key_id, sizeof(key_id));
    n += pb_uint(inner + n, 3, 0); /* InitQuoteEx{att_key_id, b_pub_key_id: false} */
    ok = aesm_ask(socket_path, 15, inner, n, &body, &msg, &msg_size, &code) == 0 &&
         code == 0 && pb_field(msg, msg_size, 2, &value, &data, &data_size) == 0 &&
         data_size == 512;
    CHECK("InitQuoteEx", ok, "status %u", code);
    if (!ok)
        return;
    memcpy(target, data, 512);
    free(body);
    int ecall = ra_begin(e, ordinal, target, report, key);
    CHECK("ecall_ra_begin for the aesmd QE", ecall == 0, "%#x", ecall);
    uint64_t size = 0;
    n = pb_bytes(inner, 1, key_id, sizeof(key_id)); /* GetQuoteSizeEx{att_key_id} */
    ok = ecall == 0 && aesm_ask(socket_path, 16, inner, n, &body, &msg, &msg_size, &code) == 0 &&
         code == 0 && pb_field(msg, msg_size, 2, &size, &data, &data_size) == 0 && size > 1000;
    CHECK("GetQuoteSizeEx", ok, "status %u size %lu", code, (unsigned long)size);
    if (!ok)
        return;
    free(body);
    n = pb_bytes(inner, 1, report, sizeof(report));
    n += pb_bytes(inner + n, 2, key_id, sizeof(key_id));
    n += pb_uint(inner + n, 4, size); /* GetQuoteEx{report, att_key_id, buf_size} */
    ok = aesm_ask(socket_path, 17, inner, n, &body, &msg, &msg_size, &code) == 0 && code == 0 &&
         pb_field(msg, msg_size, 2, &value, &data, &data_size) == 0 && data_size == size;
    CHECK("GetQuoteEx", ok, "status %u", code);
    if (ok)
        CHECK("aesm files", write_file(dir, "aesm.quote", data, data_size) &&
              write_file(dir, "aesm.key", key, 32), "%s", strerror(errno));
    free(body);
}

static int ra_quotes(const char *plan_path, long ordinal, const char *dir)
{
    plan = read_plan(plan_path);
    if (plan == NULL) {
        fprintf(stderr, "cannot read the plan %s\n", plan_path);
        return 100;
    }
    vdso_enter = (vdso_enter_t)vdso_symbol("__vdso_sgx_enter_enclave");
    CHECK("vdso symbol", vdso_enter != NULL, "not found through the section headers");
    struct enclave e;
    int ret = vdso_enter ? load(&e) : -1;
    CHECK("load", ret == 0, "step %d errno %d", ret, errno);
    if (ret != 0)
        return failures;
    dcap_quote(&e, ordinal, dir);
    aesm_quote(&e, ordinal, dir);
    destroy(&e);
    printf("done %d failures\n", failures);
    return failures;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--sigill"))
        return sigill_round_trips(atol(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "--ra"))
        return ra_quotes(argv[2], atol(argv[3]), argv[4]);
    long bench_count = 0, ecall_nop = 0;
    if (argc == 11 && !strcmp(argv[1], "--bench")) {
        bench_count = atol(argv[2]);
        ecall_nop = atol(argv[3]);
        argv += 3;
        argc -= 3;
    }
    if (argc != 8) {
        fprintf(stderr, "usage: %s PLAN ECALL_HELLO ECALL_ADD ECALL_OCALL_NOP ECALL_FAULT "
                        "OCALL_PRINT OCALL_NOP\n", argv[0]);
        return 100;
    }
    plan = read_plan(argv[1]);
    if (plan == NULL) {
        fprintf(stderr, "cannot read the plan %s\n", argv[1]);
        return 100;
    }
    ecall_hello = atol(argv[2]);
    ecall_add = atol(argv[3]);
    ecall_ocall_nop = atol(argv[4]);
    ecall_fault = atol(argv[5]);
    ocall_print = atol(argv[6]);
    ocall_nop = atol(argv[7]);
    vdso_enter = (vdso_enter_t)vdso_symbol("__vdso_sgx_enter_enclave");
    CHECK("vdso symbol", vdso_enter != NULL, "not found through the section headers");
    if (vdso_enter == NULL)
        return failures;

    struct enclave e;
    if (bench_count)
        return bench(bench_count, ecall_nop, &e);
    int ret = load(&e);
    CHECK("load", ret == 0, "step %d errno %d", ret, errno);
    if (ret != 0)
        return failures;
    int sum = 0;
    int status = add(&e, e.tcs[0], 2, 40, &sum);
    CHECK("ecall", status == 0 && sum == 42, "status %#x sum %d", status, sum);

    /* Mappings after INIT (the library checks them itself): above the
       rights of the first page (code, R-X) and outside ELRANGE, EACCES;
       that page mapped again with its own rights, the enclave runs on. */
    errno = 0;
    CHECK("map above the pages' rights",
          mmap((void *)e.base, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED,
               e.fd, 0) == MAP_FAILED && errno == EACCES, "errno %d", errno);
    errno = 0;
    CHECK("map outside ELRANGE",
          mmap(NULL, PAGE, PROT_READ, MAP_SHARED, e.fd, 0) == MAP_FAILED && errno == EACCES,
          "errno %d", errno);
    sum = 0;
    int remapped = mmap((void *)e.base, PAGE, PROT_READ | PROT_EXEC, MAP_SHARED | MAP_FIXED,
                        e.fd, 0) == (void *)e.base;
    status = add(&e, e.tcs[0], 3, 4, &sum);
    CHECK("map again with the pages' rights", remapped && status == 0 && sum == 7,
          "mapped %d status %#x sum %d", remapped, status, sum);

    struct { int retval; int count; } nops = {0, 5};
    ocalls = 0;
    status = run_ecall(&e, e.tcs[1], ecall_ocall_nop, &nops, NULL);
    CHECK("ocalls", status == 0 && nops.retval == 5 && ocalls == 5, "status %#x retval %d "
          "ocalls %d", status, nops.retval, ocalls);

    const char *name = "vsgx exec";
    struct { int retval; const char *name; size_t name_len; } hello = {0, name, strlen(name) + 1};
    status = run_ecall(&e, e.tcs[0], ecall_hello, &hello, NULL);
    CHECK("ocall with a string", status == 0 &&
          !strcmp(printed, "Hello from inside the enclave, vsgx exec!"), "status %#x text '%s'",
          status, printed);

    kept_pages_go_away(&e);

    static const int expected[] = {0, 1000001, 1000000 + 0xde, 1000000 + 0x600d};
    for (int kind = 1; kind <= 3; kind++) {
        struct { int retval; int kind; } fault = {0, kind};
        int exceptions = 0;
        status = run_ecall(&e, e.tcs[2], ecall_fault, &fault, &exceptions);
        char label[64];
        snprintf(label, sizeof(label), "exception %d", kind);
        CHECK(label, status == 0 && fault.retval == expected[kind] && exceptions == 1,
              "status %#x retval %d exceptions %d", status, fault.retval, exceptions);
    }

    struct { struct enclave *enclave; uint64_t tcs; int ok; } jobs[2] = {
        {&e, e.tcs[1], 0}, {&e, e.tcs[2], 0}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&threads[i], NULL, adder, &jobs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    CHECK("two threads", jobs[0].ok && jobs[1].ok, "a thread's ECALLs failed");

    /* A child does not inherit enclaves; it makes its own. */
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        int inherited = add(&e, e.tcs[0], 1, 1, &sum);
        struct enclave own;
        int loaded = load(&own);
        int own_status = loaded == 0 ? add(&own, own.tcs[0], 3, 4, &sum) : -1;
        _exit(inherited == SGX_ERROR_ENCLAVE_LOST && loaded == 0 && own_status == 0 && sum == 7
                  ? 0 : 10 + (loaded != 0) + 2 * (inherited != SGX_ERROR_ENCLAVE_LOST));
    }
    int child_status = -1;
    waitpid(child, &child_status, 0);
    CHECK("fork", WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0, "child status %#x",
          child_status);
    status = add(&e, e.tcs[3], 5, 6, &sum);
    CHECK("parent after fork", status == 0 && sum == 11, "status %#x", status);

    destroy(&e);
    status = add(&e, e.tcs[0], 1, 2, &sum);
    CHECK("destroyed", status == SGX_ERROR_ENCLAVE_LOST, "status %#x", status);

    /* One more, left for the exit to free. */
    struct enclave last;
    ret = load(&last);
    status = ret == 0 ? add(&last, last.tcs[0], 20, 22, &sum) : -1;
    CHECK("exit without destroy", ret == 0 && status == 0 && sum == 42, "load %d status %#x",
          ret, status);
    printf("done %d failures\n", failures);
    return failures;
}
