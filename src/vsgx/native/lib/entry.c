/* Entering enclaves: the vDSO image that getauxval(AT_SYSINFO_EHDR) hands
   out, the ENCLU of __vdso_sgx_enter_enclave, and raw ENCLU executed by the
   program itself (#UD -> SIGILL, made to look as after EEXIT or AEX).

   Every entry goes through vsgx_enter(): it is the one seam between the
   program and whatever runs the enclave (the TCS's runner through the fast
   path, fast.c, or the launcher). */
#include "vsgx_exec.h"

#include <elf.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void vsgx_vdso_sgx_enter_enclave(void) VSGX_HIDDEN;
extern char vsgx_vdso_aep[] VSGX_HIDDEN;
extern char vsgx_vdso_after_enclu[] VSGX_HIDDEN;
extern char vsgx_vdso_handle_exception[] VSGX_HIDDEN;
VSGX_HIDDEN void vsgx_call_on_stack(void (*fn)(void *), void *arg, void *top);

#define LIBRARY_STACK (512 * 1024)
#define PF_USER 0x4

/* -- the thread's library stack --------------------------------------- */
static __thread uint8_t *library_stack;

static uint8_t *library_stack_base(void)
{
    if (library_stack == NULL) {
        void *stack = vsgx_mmap_raw(NULL, LIBRARY_STACK + PAGE, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (stack == (void *)-1)
            vsgx_fatal("no memory for a library stack");
        vsgx_mprotect_raw(stack, PAGE, PROT_NONE);  /* guard */
        library_stack = stack;
    }
    return library_stack;
}

/* The top of this thread's library stack, or 0 when already on it (an
   entry made from a signal handler that interrupted ours). */
VSGX_HIDDEN uint64_t vsgx_library_stack(void)
{
    uint8_t *base = library_stack_base();
    uint8_t *here = (uint8_t *)__builtin_frame_address(0);
    if (here >= base && here < base + LIBRARY_STACK + PAGE)
        return 0;
    return (uint64_t)(base + LIBRARY_STACK + PAGE - 64);
}

void vsgx_thread_stack_release(void)
{
    if (library_stack != NULL)
        vsgx_munmap_raw(library_stack, LIBRARY_STACK + PAGE);
    library_stack = NULL;
}

/* -- registers ---------------------------------------------------------- */
uint64_t vsgx_rdfsbase(void)
{
    uint64_t value = 0;
    vsgx_syscall(SYS_arch_prctl, 0x1003 /* ARCH_GET_FS */, (long)&value, 0, 0, 0, 0);
    return value;
}

uint64_t vsgx_rdgsbase(void)
{
    uint64_t value = 0;
    vsgx_syscall(SYS_arch_prctl, 0x1004 /* ARCH_GET_GS */, (long)&value, 0, 0, 0, 0);
    return value;
}

static const int ucontext_index[R_COUNT] = {
    [R_RAX] = REG_RAX, [R_RCX] = REG_RCX, [R_RDX] = REG_RDX, [R_RBX] = REG_RBX,
    [R_RSP] = REG_RSP, [R_RBP] = REG_RBP, [R_RSI] = REG_RSI, [R_RDI] = REG_RDI,
    [R_R8] = REG_R8, [R_R9] = REG_R9, [R_R10] = REG_R10, [R_R11] = REG_R11,
    [R_R12] = REG_R12, [R_R13] = REG_R13, [R_R14] = REG_R14, [R_R15] = REG_R15,
    [R_RFLAGS] = REG_EFL, [R_RIP] = REG_RIP, [R_FSBASE] = -1, [R_GSBASE] = -1,
};

void vsgx_regs_from_ucontext(const ucontext_t *uc, uint64_t *regs)
{
    for (int i = 0; i < R_COUNT; i++)
        regs[i] = ucontext_index[i] >= 0 ? (uint64_t)uc->uc_mcontext.gregs[ucontext_index[i]] : 0;
    regs[R_FSBASE] = vsgx_rdfsbase();
    regs[R_GSBASE] = vsgx_rdgsbase();
}

void vsgx_regs_to_ucontext(const uint64_t *regs, ucontext_t *uc)
{
    for (int i = 0; i < R_COUNT; i++)
        if (ucontext_index[i] >= 0)
            uc->uc_mcontext.gregs[ucontext_index[i]] = (greg_t)regs[i];
}

/* -- the entry ---------------------------------------------------------- */
static int push_candidate(uint64_t *pages, int count, uint64_t page)
{
    if (page == 0)
        return count;
    for (int i = 0; i < count; i++)
        if (pages[i] == page)
            return count;
    pages[count] = page;
    return count + 1;
}

/* An EXIT from the launcher (or the failure to get one) into ``result``;
   the registers are the exit's after EEXIT or AEX. */
int vsgx_entry_from_reply(int ret, const struct vsgx_reply *reply, uint64_t *regs,
                          struct vsgx_entry_result *result)
{
    memset(result, 0, sizeof(*result));
    const struct vsgx_msg_exit *exit_message = (const void *)reply->data;
    if (ret < 0 || reply->length < sizeof(*exit_message) ||
        exit_message->type != VSGX_MSG_EXIT) {
        result->kind = VSGX_EXIT_LOST;
        result->status = ret < 0 ? ret : -EIO;
        return 0;
    }
    result->kind = exit_message->kind;
    result->vector = exit_message->vector;
    result->error_code = exit_message->error_code;
    result->address = exit_message->address;
    result->status = exit_message->status;
    if (result->kind == VSGX_EXIT_EEXIT || result->kind == VSGX_EXIT_AEX)
        memcpy(regs, exit_message->regs, sizeof(exit_message->regs));
    return 0;
}

/* Through the launcher: the EVM makes the entry. */
static void enter_through_launcher(uint64_t file, uint32_t leaf, uint64_t *regs,
                                   uint64_t return_rip, struct vsgx_entry_result *result)
{
    static __thread struct vsgx_msg_enter request;
    static __thread struct {
        uint64_t address;
        uint32_t state, reserved;
    } headers[VSGX_MAX_PUSHED_PAGES];
    static __thread uint8_t pushed[VSGX_MAX_PUSHED_PAGES][PAGE];
    memset(&request, 0, sizeof(request));
    request.type = VSGX_MSG_ENTER;
    request.file = file;
    request.leaf = leaf;
    request.return_rip = return_rip;
    memcpy(request.regs, regs, sizeof(request.regs));
    /* The pages the entry will almost surely touch go with it, as the
       AVM's remote EVM client pushes them: the top of the untrusted stack
       and what RDI, RSI and RDX point to. */
    uint64_t candidates[5];
    int count = 0;
    count = push_candidate(candidates, count, PAGE_DOWN(regs[R_RSP] - 8));
    count = push_candidate(candidates, count, PAGE_DOWN(regs[R_RSP] - 8 - PAGE));
    count = push_candidate(candidates, count, PAGE_DOWN(regs[R_RDI]));
    count = push_candidate(candidates, count, PAGE_DOWN(regs[R_RSI]));
    count = push_candidate(candidates, count, PAGE_DOWN(regs[R_RDX]));
    struct iovec iov[1 + 2 * VSGX_MAX_PUSHED_PAGES];
    int n = 0;
    iov[n++] = (struct iovec){&request, sizeof(request)};
    for (int i = 0; i < count; i++) {
        headers[i].address = candidates[i];
        headers[i].reserved = 0;
        int state = vsgx_page_state(candidates[i]);
        if (state != VSGX_PAGE_MISSING && vsgx_read_own(candidates[i], pushed[i], PAGE) < 0)
            state = VSGX_PAGE_MISSING;
        headers[i].state = (uint32_t)state;
        iov[n++] = (struct iovec){&headers[i], sizeof(headers[i])};
        if (state != VSGX_PAGE_MISSING)
            iov[n++] = (struct iovec){pushed[i], PAGE};
    }
    request.pushed = (uint32_t)count;
    struct vsgx_reply reply;
    int ret = vsgx_call_iov(iov, n, &reply);
    vsgx_entry_from_reply(ret, &reply, regs, result);
}

_Atomic int vsgx_entries_running;

int vsgx_enter(uint32_t leaf, uint64_t *regs, uint64_t return_rip,
               struct vsgx_entry_result *result)
{
    memset(result, 0, sizeof(*result));
    uint64_t file = vsgx_enclave_file_for_tcs(regs[R_RBX]);
    if (file == 0) {
        vsgx_log("EENTER on %#lx: no enclave there", (unsigned long)regs[R_RBX]);
        /* DS:RBX does not resolve within an EPC page: #PF on the TCS. */
        result->kind = VSGX_EXIT_FAULT;
        result->vector = 14;
        result->error_code = PF_USER;
        result->address = regs[R_RBX];
        return 0;
    }
    /* The mappings answered so far reach the EVM first (the fast path does
       not pass the launcher); then the fast path (fast.c), and what it
       leaves goes through the launcher, between its begin and end. */
    void *begun = NULL;
    /* counted before the queue is looked at: an UNMAP queued meanwhile is
       either seen here or sent by its munmap (device.c, send_unmap) */
    atomic_fetch_add(&vsgx_entries_running, 1);
    if (vsgx_maps_flush() < 0) {
        result->kind = VSGX_EXIT_LOST;
        result->status = -EIO;
    } else if (!vsgx_fast_enter_or_begin(leaf, file, regs, return_rip, result, &begun)) {
        enter_through_launcher(file, leaf, regs, return_rip, result);
    }
    vsgx_fast_done(begun);
    atomic_fetch_sub(&vsgx_entries_running, 1);
    if (result->kind == VSGX_EXIT_LOST) {
        vsgx_log("the entry on %#lx is lost (%d)", (unsigned long)regs[R_RBX], result->status);
        /* The enclave is gone: its TCS no longer resolves to EPC. */
        result->kind = VSGX_EXIT_FAULT;
        result->vector = 14;
        result->error_code = PF_USER;
        result->address = regs[R_RBX];
    }
    return 0;
}

/* -- the vDSO's ENCLU ------------------------------------------------------ */
static __thread uint64_t loaded[R_COUNT];

/* Called by vsgx_enclu_trampoline on the library stack with the registers
   of the ENCLU site (RIP = the return address of the call). Returns the
   registers to continue with, RFLAGS and RIP stored below their RSP. */
VSGX_HIDDEN uint64_t *vsgx_enclu_emulate(uint64_t *frame)
{
    uint64_t regs[R_COUNT];
    memcpy(regs, frame, sizeof(regs));
    uint64_t next = regs[R_RIP];
    regs[R_RIP] = next - 5;  /* the ENCLU (call) itself */
    regs[R_FSBASE] = vsgx_rdfsbase();
    regs[R_GSBASE] = vsgx_rdgsbase();
    uint64_t at_enclu[R_COUNT];
    memcpy(at_enclu, regs, sizeof(regs));
    struct vsgx_entry_result result;
    vsgx_enter((uint32_t)regs[R_RAX], regs, next, &result);
    if (result.kind == VSGX_EXIT_FAULT)
        memcpy(regs, at_enclu, sizeof(regs));
    if (result.kind != VSGX_EXIT_EEXIT) {
        /* The kernel's vDSO exception fixup (fixup_vdso_exception). */
        regs[R_RIP] = (uint64_t)vsgx_vdso_handle_exception;
        regs[R_RDI] = result.vector;
        regs[R_RSI] = result.error_code;
        regs[R_RDX] = result.address;
    }
    memcpy(loaded, regs, sizeof(regs));
    uint64_t target = regs[R_RSP];
    uint64_t tail[2] = {regs[R_RFLAGS], regs[R_RIP]};
    if (vsgx_write_own(target - 16, tail, sizeof(tail)) < 0)
        vsgx_fatal("the enclave exited with an unusable stack pointer %#lx",
                   (unsigned long)target);
    loaded[R_RSP] = target - 16;
    return loaded;
}

/* -- raw ENCLU in the program ----------------------------------------------- */
#define ALTERNATE_STACK (64 * 1024)
static __thread uint8_t *alternate_stack;

struct raw_entry {
    ucontext_t *uc;
    int signal;
    siginfo_t info;
};

static int signal_for(uint32_t vector, uint32_t error_code, uint64_t address, siginfo_t *info)
{
    memset(info, 0, sizeof(*info));
    switch (vector) {
    case 0:  /* #DE */
        info->si_signo = SIGFPE;
        info->si_code = FPE_INTDIV;
        break;
    case 1:  /* #DB */
    case 3:  /* #BP */
        info->si_signo = SIGTRAP;
        info->si_code = SI_KERNEL;
        break;
    case 6:  /* #UD */
        info->si_signo = SIGILL;
        info->si_code = ILL_ILLOPN;
        break;
    case 14: /* #PF */
        info->si_signo = SIGSEGV;
        info->si_code = (error_code & 1) ? SEGV_ACCERR : SEGV_MAPERR;
        info->si_addr = (void *)address;
        break;
    case 16: /* #MF */
    case 19: /* #XM */
        info->si_signo = SIGFPE;
        info->si_code = FPE_FLTINV;
        break;
    case 17: /* #AC */
        info->si_signo = SIGBUS;
        info->si_code = BUS_ADRALN;
        break;
    default: /* #GP and the rest */
        info->si_signo = SIGSEGV;
        info->si_code = SI_KERNEL;
        break;
    }
    return info->si_signo;
}

static void raw_entry_on_stack(void *argument)
{
    struct raw_entry *entry = argument;
    ucontext_t *uc = entry->uc;
    uint64_t regs[R_COUNT];
    vsgx_regs_from_ucontext(uc, regs);
    uint64_t rip = regs[R_RIP];
    struct vsgx_entry_result result;
    vsgx_enter((uint32_t)regs[R_RAX], regs, rip + 3, &result);
    entry->signal = 0;
    if (result.kind == VSGX_EXIT_EEXIT || result.kind == VSGX_EXIT_AEX)
        vsgx_regs_to_ucontext(regs, uc);
    if (result.kind != VSGX_EXIT_EEXIT)
        entry->signal = signal_for(result.vector, result.error_code, result.address,
                                   &entry->info);
}

/* A SIGILL or SIGSEGV (as the CPU refuses ENCLU) at 0f 01 d7 with
   EAX = EENTER or ERESUME: perform the entry and
   make the context look as after it; an AEX or a faulting ENCLU reaches the
   program as the signal the kernel would send, at the AEP (RAX = ERESUME)
   or at the ENCLU (RAX = EENTER). Returns 1 if handled. */
int vsgx_handle_raw_enclu(ucontext_t *uc)
{
    uint8_t code[3];
    uint64_t rip = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
    if (vsgx_read_own(rip, code, 3) < 0 || code[0] != 0x0f || code[1] != 0x01 || code[2] != 0xd7)
        return 0;
    uint32_t leaf = (uint32_t)uc->uc_mcontext.gregs[REG_RAX];
    if (leaf != ENCLU_EENTER && leaf != ENCLU_ERESUME)
        return 0;
    /* The enclave writes the untrusted stack below RSP during the entry:
       the signal frame must not be there. Without an alternate stack, set
       one up and let the ENCLU fault again onto it. */
    stack_t current;
    if (sigaltstack(NULL, &current) == 0 && !(current.ss_flags & SS_ONSTACK)) {
        if (current.ss_flags & SS_DISABLE) {
            if (alternate_stack == NULL) {
                void *stack = vsgx_mmap_raw(NULL, ALTERNATE_STACK, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (stack == (void *)-1)
                    vsgx_fatal("no memory for a signal stack");
                alternate_stack = stack;
            }
            stack_t ours = {0};
            ours.ss_sp = alternate_stack;
            ours.ss_size = ALTERNATE_STACK;
            /* sigreturn restores the stack settings saved in the context:
               the new one must be there too. */
            if (sigaltstack(&ours, NULL) == 0)
                uc->uc_stack = ours;
        }
        return 1;
    }
    struct raw_entry entry = {uc, 0, {0}};
    vsgx_call_on_stack(raw_entry_on_stack, &entry, (void *)vsgx_library_stack());
    if (entry.signal)
        vsgx_deliver_to_program(entry.signal, &entry.info, uc);
    return 1;
}

/* -- the vDSO image --------------------------------------------------------- */
/* What getauxval(AT_SYSINFO_EHDR) returns: an ELF image with the real vDSO's
   symbols (pointing at the real functions) and __vdso_sgx_enter_enclave,
   findable both through section headers (.shstrtab, .dynsym, .dynstr: Intel's
   urts) and through PT_DYNAMIC's DT_HASH/DT_SYMTAB/DT_STRTAB (the kernel
   selftests), versioned LINUX_2.6 as the kernel's. */
#define MAX_SYMBOLS 64
#define IMAGE_SIZE (4 * PAGE)

static uint64_t image_base;
static pthread_mutex_t image_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long (*real_getauxval)(unsigned long);

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

struct symbol {
    const char *name;
    uint64_t address;
    unsigned char info;
};

static int real_vdso_symbols(uint64_t base, struct symbol *out, int max)
{
    if (base == 0)
        return 0;
    const Elf64_Ehdr *ehdr = (const void *)base;
    if (memcmp(ehdr->e_ident, ELFMAG, SELFMAG))
        return 0;
    const Elf64_Phdr *phdr = (const void *)(base + ehdr->e_phoff);
    const Elf64_Dyn *dyn = NULL;
    uint64_t load_bias = 0;
    for (int i = 0; i < ehdr->e_phnum; i++) {
        if (phdr[i].p_type == PT_DYNAMIC)
            dyn = (const void *)(base + phdr[i].p_offset);
        if (phdr[i].p_type == PT_LOAD && phdr[i].p_offset == 0)
            load_bias = base - phdr[i].p_vaddr;
    }
    if (dyn == NULL)
        return 0;
    const Elf64_Sym *symtab = NULL;
    const char *strtab = NULL;
    const Elf64_Word *hash = NULL;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        if (dyn->d_tag == DT_SYMTAB)
            symtab = (const void *)(load_bias + dyn->d_un.d_ptr);
        else if (dyn->d_tag == DT_STRTAB)
            strtab = (const void *)(load_bias + dyn->d_un.d_ptr);
        else if (dyn->d_tag == DT_HASH)
            hash = (const void *)(load_bias + dyn->d_un.d_ptr);
    }
    if (symtab == NULL || strtab == NULL || hash == NULL)
        return 0;
    int count = 0;
    for (Elf64_Word i = 1; i < hash[1] && count < max; i++) {
        const Elf64_Sym *sym = &symtab[i];
        if (sym->st_shndx == SHN_UNDEF || sym->st_shndx == SHN_ABS ||
            ELF64_ST_TYPE(sym->st_info) != STT_FUNC)
            continue;
        const char *name = strtab + sym->st_name;
        if (!strcmp(name, "__vdso_sgx_enter_enclave"))
            continue;  /* ours replaces the kernel's (which cannot run here) */
        out[count++] = (struct symbol){name, load_bias + sym->st_value, sym->st_info};
    }
    return count;
}

struct builder {
    uint8_t *image;
    size_t used;
};

static size_t reserve(struct builder *b, size_t size, size_t align)
{
    b->used = (b->used + align - 1) & ~(align - 1);
    size_t at = b->used;
    b->used += size;
    if (b->used > IMAGE_SIZE)
        vsgx_fatal("the vDSO image does not fit");
    return at;
}

static void build_image(void)
{
    uint8_t *image = vsgx_mmap_raw(NULL, IMAGE_SIZE, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (image == (void *)-1)
        vsgx_fatal("no memory for the vDSO image");
    uint64_t base = (uint64_t)image;
    struct symbol symbols[MAX_SYMBOLS];
    int count = real_vdso_symbols(real_getauxval(AT_SYSINFO_EHDR), symbols, MAX_SYMBOLS - 1);
    /* VSGX_EXEC_VDSO=0: a kernel without the SGX vDSO function (runtimes
       then execute ENCLU themselves, which traps here). */
    const char *offer = getenv("VSGX_EXEC_VDSO");
    if (offer == NULL || offer[0] != '0')
        symbols[count++] = (struct symbol){"__vdso_sgx_enter_enclave",
                                           (uint64_t)vsgx_vdso_sgx_enter_enclave,
                                           ELF64_ST_INFO(STB_GLOBAL, STT_FUNC)};
    int nsyms = count + 1;  /* with the null symbol */
    const char *soname = "linux-vdso.so.1", *version = "LINUX_2.6";

    struct builder b = {image, 0};
    size_t ehdr_at = reserve(&b, sizeof(Elf64_Ehdr), 8);
    size_t phdr_at = reserve(&b, 2 * sizeof(Elf64_Phdr), 8);
    size_t nbucket = (size_t)count;
    size_t hash_at = reserve(&b, (2 + nbucket + (size_t)nsyms) * 4, 8);
    size_t dynsym_at = reserve(&b, (size_t)nsyms * sizeof(Elf64_Sym), 8);
    size_t dynstr_at = b.used;
    /* strings: "\0" soname version names... */
    size_t strings = 1 + strlen(soname) + 1 + strlen(version) + 1;
    for (int i = 0; i < count; i++)
        strings += strlen(symbols[i].name) + 1;
    reserve(&b, strings, 1);
    size_t versym_at = reserve(&b, (size_t)nsyms * 2, 2);
    size_t verdef_at = reserve(&b, 2 * (sizeof(Elf64_Verdef) + sizeof(Elf64_Verdaux)), 8);
    size_t dynamic_at = reserve(&b, 11 * sizeof(Elf64_Dyn), 8);
    const char shstrtab[] = "\0.hash\0.dynsym\0.dynstr\0.gnu.version\0.gnu.version_d\0"
                            ".dynamic\0.text\0.shstrtab";
    size_t shstrtab_at = reserve(&b, sizeof(shstrtab), 1);
    size_t shdr_at = reserve(&b, 9 * sizeof(Elf64_Shdr), 8);

    /* strings */
    char *str = (char *)image + dynstr_at;
    size_t s = 1;
    size_t soname_off = s;
    memcpy(str + s, soname, strlen(soname) + 1), s += strlen(soname) + 1;
    size_t version_off = s;
    memcpy(str + s, version, strlen(version) + 1), s += strlen(version) + 1;
    /* symbols, hash */
    Elf64_Sym *sym = (Elf64_Sym *)(image + dynsym_at);
    Elf64_Word *hash = (Elf64_Word *)(image + hash_at);
    Elf64_Half *versym = (Elf64_Half *)(image + versym_at);
    hash[0] = (Elf64_Word)nbucket;
    hash[1] = (Elf64_Word)nsyms;
    Elf64_Word *bucket = hash + 2, *chain = hash + 2 + nbucket;
    versym[0] = 0;
    for (int i = 0; i < count; i++) {
        Elf64_Sym *entry = &sym[i + 1];
        entry->st_name = (Elf64_Word)s;
        size_t len = strlen(symbols[i].name) + 1;
        memcpy(str + s, symbols[i].name, len);
        s += len;
        entry->st_info = symbols[i].info;
        entry->st_shndx = 7;  /* .text */
        entry->st_value = symbols[i].address - base;  /* base + value = the function */
        entry->st_size = 0;
        versym[i + 1] = 2;  /* LINUX_2.6 */
        unsigned long h = elf_hash(symbols[i].name) % nbucket;
        chain[i + 1] = bucket[h];
        bucket[h] = (Elf64_Word)(i + 1);
    }
    /* version definitions: the base (soname) and LINUX_2.6 */
    Elf64_Verdef *vd = (Elf64_Verdef *)(image + verdef_at);
    for (int i = 0; i < 2; i++) {
        Elf64_Verdaux *aux = (Elf64_Verdaux *)(vd + 1);
        vd->vd_version = VER_DEF_CURRENT;
        vd->vd_flags = i == 0 ? VER_FLG_BASE : 0;
        vd->vd_ndx = (Elf64_Half)(i + 1);
        vd->vd_cnt = 1;
        const char *name = i == 0 ? soname : version;
        vd->vd_hash = (Elf64_Word)elf_hash(name);
        vd->vd_aux = sizeof(Elf64_Verdef);
        vd->vd_next = i == 0 ? sizeof(Elf64_Verdef) + sizeof(Elf64_Verdaux) : 0;
        aux->vda_name = (Elf64_Word)(i == 0 ? soname_off : version_off);
        aux->vda_next = 0;
        vd = (Elf64_Verdef *)((uint8_t *)vd + sizeof(Elf64_Verdef) + sizeof(Elf64_Verdaux));
    }
    /* dynamic table */
    Elf64_Dyn *dyn = (Elf64_Dyn *)(image + dynamic_at);
    Elf64_Dyn entries[] = {
        {DT_SONAME, {soname_off}}, {DT_HASH, {hash_at}}, {DT_STRTAB, {dynstr_at}},
        {DT_SYMTAB, {dynsym_at}}, {DT_STRSZ, {strings}}, {DT_SYMENT, {sizeof(Elf64_Sym)}},
        {DT_VERSYM, {versym_at}}, {DT_VERDEF, {verdef_at}}, {DT_VERDEFNUM, {2}},
        {DT_NULL, {0}},
    };
    memcpy(dyn, entries, sizeof(entries));
    memcpy(image + shstrtab_at, shstrtab, sizeof(shstrtab));
    /* section headers */
    Elf64_Shdr *sh = (Elf64_Shdr *)(image + shdr_at);
    struct { uint32_t name, type; uint64_t at, size, entsize; uint32_t link, info, align; }
        sections[9] = {
            {0, SHT_NULL, 0, 0, 0, 0, 0, 0},
            {1, SHT_HASH, hash_at, (2 + nbucket + (size_t)nsyms) * 4, 4, 2, 0, 8},
            {7, SHT_DYNSYM, dynsym_at, (size_t)nsyms * sizeof(Elf64_Sym), sizeof(Elf64_Sym), 3,
             1, 8},
            {15, SHT_STRTAB, dynstr_at, strings, 0, 0, 0, 1},
            {23, SHT_GNU_versym, versym_at, (size_t)nsyms * 2, 2, 2, 0, 2},
            {36, SHT_GNU_verdef, verdef_at, 2 * (sizeof(Elf64_Verdef) + sizeof(Elf64_Verdaux)),
             0, 3, 2, 8},
            {51, SHT_DYNAMIC, dynamic_at, sizeof(entries), sizeof(Elf64_Dyn), 3, 0, 8},
            {60, SHT_PROGBITS, 0, 0, 0, 0, 0, 16},
            {66, SHT_STRTAB, shstrtab_at, sizeof(shstrtab), 0, 0, 0, 1},
        };
    for (int i = 0; i < 9; i++) {
        sh[i].sh_name = sections[i].name;
        sh[i].sh_type = sections[i].type;
        sh[i].sh_flags = (i >= 1 && i <= 6) ? SHF_ALLOC : (i == 7 ? SHF_ALLOC | SHF_EXECINSTR : 0);
        sh[i].sh_addr = (i >= 1 && i <= 6) ? sections[i].at : 0;
        sh[i].sh_offset = sections[i].at;
        sh[i].sh_size = sections[i].size;
        sh[i].sh_link = sections[i].link;
        sh[i].sh_info = sections[i].info;
        sh[i].sh_addralign = sections[i].align;
        sh[i].sh_entsize = sections[i].entsize;
    }
    /* program headers */
    Elf64_Phdr *ph = (Elf64_Phdr *)(image + phdr_at);
    ph[0] = (Elf64_Phdr){PT_LOAD, PF_R | PF_X, 0, 0, 0, b.used, b.used, PAGE};
    ph[1] = (Elf64_Phdr){PT_DYNAMIC, PF_R, dynamic_at, dynamic_at, dynamic_at, sizeof(entries),
                         sizeof(entries), 8};
    /* ELF header */
    Elf64_Ehdr *eh = (Elf64_Ehdr *)(image + ehdr_at);
    memcpy(eh->e_ident, ELFMAG, SELFMAG);
    eh->e_ident[EI_CLASS] = ELFCLASS64;
    eh->e_ident[EI_DATA] = ELFDATA2LSB;
    eh->e_ident[EI_VERSION] = EV_CURRENT;
    eh->e_ident[EI_OSABI] = ELFOSABI_SYSV;
    eh->e_type = ET_DYN;
    eh->e_machine = EM_X86_64;
    eh->e_version = EV_CURRENT;
    eh->e_phoff = phdr_at;
    eh->e_shoff = shdr_at;
    eh->e_ehsize = sizeof(Elf64_Ehdr);
    eh->e_phentsize = sizeof(Elf64_Phdr);
    eh->e_phnum = 2;
    eh->e_shentsize = sizeof(Elf64_Shdr);
    eh->e_shnum = 9;
    eh->e_shstrndx = 8;
    vsgx_mprotect_raw(image, IMAGE_SIZE, PROT_READ);
    __atomic_store_n(&image_base, base, __ATOMIC_RELEASE);
}

uint64_t vsgx_vdso_base(void)
{
    uint64_t base = __atomic_load_n(&image_base, __ATOMIC_ACQUIRE);
    if (base)
        return base;
    pthread_mutex_lock(&image_lock);
    if (real_getauxval == NULL)
        real_getauxval = vsgx_real("getauxval");
    if (image_base == 0)
        build_image();
    pthread_mutex_unlock(&image_lock);
    return image_base;
}

VSGX_EXPORT unsigned long getauxval(unsigned long type)
{
    if (type == AT_SYSINFO_EHDR) {
        vsgx_init();
        return vsgx_vdso_base();
    }
    if (real_getauxval == NULL)
        real_getauxval = vsgx_real("getauxval");
    return real_getauxval(type);
}

VSGX_EXPORT unsigned long __getauxval(unsigned long type) __attribute__((alias("getauxval")));
