/* vsgx native runner: executes one enclave thread's code on the real CPU,
   in a sandbox whose boundary lies between enclave code and the runner.

   The EVM starts one runner per TCS. The enclave's memory (a memfd of the
   EVM) is mapped MAP_SHARED at the enclave's own linear addresses with the
   protections the EVM sends; untrusted pages the enclave touches are mapped
   from a second memfd, the page pool. Two more memfds are the REPORT area
   (runner-written, EVM-read) and the COMMAND area (EVM-written, mapped
   read-only here) — see vsgx/evm/runner/layout.py, which generates
   vsgx_layout.h. Two more make the fast path: the CLIENT area, where the
   program's library (or the Python host) asks for EENTER and gets EEXIT
   and page requests back without the EVM, checked against the grant the
   EVM wrote into COMMAND; and the enclave's STATE page (read-only), whose
   version every grant must still match.

   Enclave code runs in this address space and can write everything the
   runner can write and jump anywhere the runner can execute. So, after
   set-up:
   - the only runner code left executable is the entry section
     (.text.vsgx_entry, page aligned); the rest of the runner's text and its
     read-only data are PROT_NONE, so a jump there faults;
   - the seccomp filter (filter.c) allows system calls only from the entry
     section, and only by number and arguments that are harmless whoever
     makes them; everything else, another ABI included, is SIGSYS;
   - what the runner must trust (the commands, the page operations, the
     registers to enter with, the grant) is in the read-only COMMAND area; its own
     constants are on a page sealed read-only; the REPORT area is written by
     the runner but also writable by enclave code, so the EVM treats every
     report as untrusted;
   - enclave code runs with no signal blocked and cannot block one (no
     rt_sigreturn, no sigaction, rt_sigprocmask only with the one empty
     mask), so the EVM's interrupts and the watchdog alarm always arrive;
   - the process has nothing worth stealing: no file descriptor but the
     page pool, an empty root, fresh namespaces where the host allows them,
     no capabilities, no_new_privs, tight rlimits.

   Leaving the enclave is a signal (SIGILL for #UD and for ENCLU, or SIGSEGV
   for ENCLU where the CPU makes it #GP; SIGSEGV/SIGBUS/SIGFPE/SIGTRAP for
   faults, SIGSYS for a refused system call,
   SIGUSR1 for the EVM's interrupts, SIGALRM once a second); the handler
   reports the raw signal and waits for a command. Entering is IRETQ with a
   user-mode frame built from the entry block, after restoring the FPU
   state and unmasking signals: no sigreturn, so nothing enclave code wrote
   into the signal frame is ever loaded.

   Freestanding: no libc, no TLS, no stack protector — handlers run with the
   enclave's FS and GS bases. */
#include <stddef.h>
#include <stdint.h>

#include "vsgx_layout.h"
#include "filter.c"

#define ENTRY_TEXT __attribute__((section(".text.vsgx_entry")))
#define ENTRY_FN ENTRY_TEXT __attribute__((noinline, used))
#define INLINE static inline __attribute__((always_inline))
#define STR(x) #x
#define XSTR(x) STR(x)

/* -- Linux x86-64 ABI ----------------------------------------------------- */
#define SYS_read 0
#define SYS_close 3
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_munmap 11
#define SYS_rt_sigaction 13
#define SYS_rt_sigprocmask 14
#define SYS_rt_sigreturn 15
#define SYS_setitimer 38
#define SYS_getpid 39
#define SYS_exit_group 231
#define SYS_getppid 110
#define SYS_sched_yield 24
#define SYS_geteuid 107
#define SYS_setgroups 116
#define SYS_setresuid 117
#define SYS_setresgid 119
#define SYS_capget 125
#define SYS_capset 126
#define SYS_sigaltstack 131
#define SYS_chdir 80
#define SYS_chroot 161
#define SYS_setrlimit 160
#define SYS_prctl 157
#define SYS_arch_prctl 158
#define SYS_gettid 186
#define SYS_futex 202
#define SYS_tgkill 234
#define SYS_openat 257
#define SYS_unshare 272
#define SYS_dup3 292
#define SYS_seccomp 317
#define SYS_close_range 436

#define AT_FDCWD -100
#define PROT_NONE 0
#define PROT_READ 1
#define PROT_RW 3
#define PROT_EXEC 4
#define MAP_PRIVATE 0x02
#define MAP_ANONYMOUS 0x20
#define MAP_SHARED 0x01
#define MAP_FIXED 0x10
#define MAP_FIXED_NOREPLACE 0x100000
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define ETIMEDOUT 110
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003
#define ARCH_GET_GS 0x1004
#define ARCH_SET_CPUID 0x1012
#define PR_SET_NO_NEW_PRIVS 38
#define PR_SET_TSC 26
#define PR_TSC_SIGSEGV 2
#define SECCOMP_SET_MODE_FILTER 1
#define CLONE_NEWNS 0x00020000
#define CLONE_NEWUTS 0x04000000
#define CLONE_NEWIPC 0x08000000
#define CLONE_NEWUSER 0x10000000
#define CLONE_NEWNET 0x40000000
#define NOBODY 65534

#define SIGILL 4
#define SIGTRAP 5
#define SIGBUS 7
#define SIGFPE 8
#define SIGUSR1 10
#define SIGSEGV 11
#define SIGUSR2 12
#define SIGALRM 14
#define SIGSYS 31
/* Never sent: in the sa_mask of every handler, so it is blocked exactly
   while a kernel-delivered handler runs. */
#define SIG_MARKER 64
#define SA_SIGINFO 0x4
#define SA_ONSTACK 0x08000000
#define SA_RESTORER 0x04000000
#define SA_NODEFER 0x40000000
#define SIG_IGN ((void *)1)
#define SIGMASK(s) (1ull << ((s) - 1))
#define HANDLER_MASK (SIGMASK(SIG_MARKER) | SIGMASK(SIGUSR1) | SIGMASK(SIGALRM))

#define AT_NULL 0
#define AT_HWCAP2 26
#define HWCAP2_FSGSBASE 2
#define FP_XSTATE_MAGIC1 0x46505853u

struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

/* ucontext: uc_mcontext at 40 (struct sigcontext: r8..r15, rdi, rsi, rbp,
   rbx, rdx, rax, rcx, rsp, rip, eflags, cs/gs/fs/ss, err, trapno, oldmask,
   cr2, fpstate). siginfo: si_code at 8, si_addr at 16, and for SIGSYS
   si_syscall at 24 and si_arch at 28. */
#define MC(uc, i) (((const uint64_t *)((const uint8_t *)(uc) + 40))[i])
enum { MC_R8, MC_R9, MC_R10, MC_R11, MC_R12, MC_R13, MC_R14, MC_R15, MC_RDI, MC_RSI, MC_RBP,
       MC_RBX, MC_RDX, MC_RAX, MC_RCX, MC_RSP, MC_RIP, MC_EFL, MC_CSGSFS, MC_ERR, MC_TRAPNO,
       MC_OLDMASK, MC_CR2, MC_FPSTATE };

INLINE long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define SYSCALL(n, a, b, c, d, e, f)                                                       \
    sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

INLINE void copy(void *to, const void *from, size_t n)
{
    __asm__ volatile("rep movsb" : "+D"(to), "+S"(from), "+c"(n) : : "memory");
}

/* -- what the entry section uses (all inside the image: RIP-relative) --- */
struct vsgx_report vsgx_report __attribute__((section(".bss.vsgx_report")));
struct vsgx_command vsgx_command __attribute__((section(".bss.vsgx_command")));
/* The fast path's area (shared with the client, writable by everyone
   here) and the enclave's state page (read-only: the EVM's version). */
struct vsgx_client vsgx_client __attribute__((section(".bss.vsgx_client")));
struct vsgx_state vsgx_state __attribute__((section(".bss.vsgx_state")));

/* Written during set-up, then mprotected read-only. */
struct sealed_constants {
    uint64_t empty_mask;       /* the one mask rt_sigprocmask may set */
    long second[2];            /* the one futex timeout: a struct timespec */
    uint64_t enclave_begin, enclave_end;
    uint64_t xfeatures;        /* XRSTOR's mask: what the kernel puts in signal frames */
    uint64_t pool_fd;
    long parent;
    uint32_t fsgsbase, xsave;
    uint32_t rdpid;            /* the CPU has RDPID (CPUID.7.0:ECX[22]) */
};
union sealed_page {
    struct sealed_constants s;
    uint8_t page[4096];
};
union sealed_page vsgx_sealed __attribute__((section(".bss.vsgx_sealed"), aligned(4096)));
#define sealed (vsgx_sealed.s)

/* RFLAGS enclave code may hold: CF PF AF ZF SF DF OF AC ID (no TF, NT, RF). */
#define ENTRY_FLAGS 0x240CD5
#define SEALED_OFF_FSGSBASE 64
#define SEALED_OFF_XSAVE 68
#define SEALED_OFF_XFEATURES 40
_Static_assert(offsetof(struct sealed_constants, empty_mask) == 0, "sealed");
_Static_assert(offsetof(struct sealed_constants, fsgsbase) == SEALED_OFF_FSGSBASE, "sealed");
_Static_assert(offsetof(struct sealed_constants, xsave) == SEALED_OFF_XSAVE, "sealed");
_Static_assert(offsetof(struct sealed_constants, xfeatures) == SEALED_OFF_XFEATURES, "sealed");

/* The entry section's read-write state (enclave code can write it too). */
struct scratch {
    uint64_t captured[16];     /* 0: GPRs at the handler's first instruction */
    uint64_t captured_flags;   /* 128 */
    uint64_t mask;             /* 136: the blocked-signal query's answer */
    uint64_t base;             /* 144: ARCH_GET_FS/GS's answer */
    uint64_t fpstate;          /* 152: the signal frame's XSAVE image to resume with, or 0 */
    uint32_t last_cmd;         /* 160 */
};
struct scratch vsgx_scratch __attribute__((section(".bss.vsgx_scratch"), aligned(64)));
_Static_assert(offsetof(struct scratch, captured_flags) == 128, "scratch");
_Static_assert(offsetof(struct scratch, mask) == 136, "scratch");
_Static_assert(offsetof(struct scratch, fpstate) == 152, "scratch");

/* What vsgx_enter loads: the registers (vsgx.evm.executor order) and,
   when vsgx_entry_load_fpu is set, an FXSAVE image. Filled from the
   COMMAND area (an entry of the EVM), from the grant and the client's
   request (a fast entry) or from a signal frame (a resume); no enclave
   code runs in this process between the filling and the IRETQ. */
uint64_t vsgx_entry_regs[VSGX_REG_COUNT] __attribute__((section(".bss.vsgx_scratch"), aligned(64)));
uint8_t vsgx_entry_fpu[512] __attribute__((section(".bss.vsgx_scratch"), aligned(64)));
uint32_t vsgx_entry_load_fpu __attribute__((section(".bss.vsgx_scratch")));

/* The fast path's own state. Enclave code can write it; what it gains by
   that is confusion about its own thread: the grant and the filter bound
   what the runner does whatever this holds. */
struct fast {
    uint32_t last_req;         /* CLIENT.request_seq last taken */
    uint32_t active;           /* a fast entry runs enclave code */
    uint32_t handed_over;      /* ... which now goes on in the EVM, until the next grant */
    uint32_t grant_seq;        /* the grant whose CSSA is below */
    uint32_t cssa;
    uint32_t interrupt_seen;   /* COMMAND.interrupt_seq at the entry */
    uint32_t in_request;       /* the runner works on a request (a fault here refuses it) */
    uint32_t code_readable;
    uint32_t spin_limit;       /* adaptive: pause rounds before the futex */
    uint32_t unblocked;        /* runner code runs with no signal blocked (after the gate) */
    uint64_t aep, entry_fs, entry_gs;
    uint64_t request_regs[VSGX_REG_COUNT];
    uint64_t slot_page[VSGX_CLIENT_SLOTS];  /* where each client slot is mapped, or 0 */
    uint32_t reconciling;      /* a reconcile_slots was cut short: do it again */
};
struct fast vsgx_fast __attribute__((section(".bss.vsgx_scratch"), aligned(64)));
#define FAST_OFF_IN_REQUEST 24
#define FAST_OFF_UNBLOCKED 36
_Static_assert(offsetof(struct fast, in_request) == FAST_OFF_IN_REQUEST, "fast");
_Static_assert(offsetof(struct fast, unblocked) == FAST_OFF_UNBLOCKED, "fast");

/* Fast-exit mode's exit gate (vsgx.evm.fast_exits): the registers enclave
   code had when it jumped through a gate entry (vsgx.evm.executor order),
   and the stack the gate's exit runs on. */
uint64_t vsgx_gate_regs[VSGX_REG_COUNT] __attribute__((section(".bss.vsgx_scratch"), aligned(64)));
#define GATE_STACK_SIZE (16 * 1024)
uint8_t vsgx_gate_stack[GATE_STACK_SIZE] __attribute__((section(".bss.vsgx_stack"), aligned(4096)));

/* vsgx_enter's stack: off the alternate stack, so that a signal in the
   return window starts a fresh frame at the alternate stack's top instead
   of nesting below frames that are dead by then (repeated, that nesting
   would overflow the alternate stack). */
uint64_t vsgx_iret_stack[8] __attribute__((section(".bss.vsgx_scratch"), aligned(64)));

#define ALT_STACK_SIZE (64 * 1024)
uint8_t vsgx_alt_stack[ALT_STACK_SIZE] __attribute__((section(".bss.vsgx_stack"), aligned(4096)));
uint8_t vsgx_setup_stack[64 * 1024] __attribute__((section(".bss.vsgx_stack"), aligned(4096)));

/* Regions set-up found and the entry section unmaps (the kernel's stack,
   vDSO and vvar pages). */
#define UNMAP_MAX 32
uint64_t vsgx_unmap[UNMAP_MAX][2];
uint32_t vsgx_unmap_count;

extern char vsgx_image_begin[], vsgx_image_end[], vsgx_entry_begin[], vsgx_entry_end[];
extern char vsgx_sealable_begin[], vsgx_sealable_end[];
extern char vsgx_window_begin[], vsgx_window_end[], vsgx_handler[], vsgx_no_return[];
extern char vsgx_gate_begin[], vsgx_gate_end[], vsgx_gate_entry[], vsgx_rearm[];
__attribute__((noreturn)) void vsgx_enter(void);
__attribute__((noreturn)) void vsgx_rearm_trap(void);

/* ===================== the entry section ================================ */

INLINE void report(uint32_t kind)
{
    vsgx_report.kind = kind;
    __atomic_add_fetch(&vsgx_report.seq, 1, __ATOMIC_SEQ_CST);
    SYSCALL(SYS_futex, &vsgx_report.seq, FUTEX_WAKE, 1, 0, 0, 0);
}

INLINE void get_bases(uint64_t *fs, uint64_t *gs)
{
    if (sealed.fsgsbase) {
        __asm__ volatile("rdfsbase %0" : "=r"(*fs));
        __asm__ volatile("rdgsbase %0" : "=r"(*gs));
    } else {
        SYSCALL(SYS_arch_prctl, ARCH_GET_FS, &vsgx_scratch.base, 0, 0, 0, 0);
        *fs = vsgx_scratch.base;
        SYSCALL(SYS_arch_prctl, ARCH_GET_GS, &vsgx_scratch.base, 0, 0, 0, 0);
        *gs = vsgx_scratch.base;
    }
}

#define SPIN_MIN 1024
#define SPIN_YIELD_FROM 256 /* pause rounds before a spin also yields */
#define SPIN_MAX 40000

/* This CPU's number + 1 (0 without RDPID): the same-CPU hint. */
INLINE uint32_t this_cpu(void)
{
    if (!sealed.rdpid)
        return 0;
    uint64_t id;
    __asm__ volatile("rdpid %0" : "=r"(id));
    return (uint32_t)(id & 0xfff) + 1;
}

INLINE int work_pending(void)
{
    return __atomic_load_n(&vsgx_command.seq, __ATOMIC_ACQUIRE) != vsgx_scratch.last_cmd ||
           __atomic_load_n(&vsgx_client.request_seq, __ATOMIC_ACQUIRE) != vsgx_fast.last_req;
}

INLINE void pause_once(void)
{
    __asm__ volatile("pause" ::: "memory");
}

/* Wait for a command of the EVM or a request of the client (both ring the
   doorbell). Spin first, for as long as work has recently taken to come
   (twice that, bounded), since a futex wake-up costs an IPI; then sleep,
   saying so, so that whoever rings wakes us. The budget halves each time
   the work did not come within it, so a runner whose client is busy
   elsewhere (or descheduled) soon stops taking the CPU from it. */
INLINE void wait_for_work(void)
{
    struct fast *f = &vsgx_fast;
    uint32_t limit = f->spin_limit;
    if (limit < SPIN_MIN || limit > SPIN_MAX)
        limit = SPIN_MIN;
    for (uint32_t i = 0; i < limit; i++) {
        if (work_pending()) {
            uint32_t want = 2 * i + SPIN_MIN;
            f->spin_limit = want > limit ? (want < SPIN_MAX ? want : SPIN_MAX) : limit;
            return;
        }
        /* a client that shares this CPU gets to send its request: at once
           when it last ran here (looked at every other round: the client
           cannot run until we yield, and 64 rounds of pause were 2 us of
           each round trip on a loaded machine), past the floor of a
           request otherwise */
        if ((i & 1) == 0) {
            uint32_t cpu = this_cpu();
            if ((i >= SPIN_YIELD_FROM && (i & 63) == 0) ||
                (cpu && __atomic_load_n(&vsgx_client.client_cpu, __ATOMIC_RELAXED) == cpu)) {
                SYSCALL(SYS_sched_yield, 0, 0, 0, 0, 0, 0);
                continue;
            }
        }
        pause_once();
    }
    f->spin_limit = limit / 2 > SPIN_MIN ? limit / 2 : SPIN_MIN;
    struct vsgx_client *c = &vsgx_client;
    for (;;) {
        uint32_t bell = __atomic_load_n(&c->doorbell, __ATOMIC_ACQUIRE);
        if (work_pending())
            return;
        __atomic_store_n(&c->runner_sleeping, 1, __ATOMIC_SEQ_CST);
        if (work_pending()) {
            __atomic_store_n(&c->runner_sleeping, 0, __ATOMIC_RELAXED);
            return;
        }
        long r = SYSCALL(SYS_futex, &c->doorbell, FUTEX_WAIT, bell, sealed.second, 0, 0);
        __atomic_store_n(&c->runner_sleeping, 0, __ATOMIC_RELAXED);
        if (r == -ETIMEDOUT) {
            __atomic_add_fetch(&c->heartbeat, 1, __ATOMIC_RELAXED);
            /* The EVM went away (we were re-parented): so do we. */
            if (SYSCALL(SYS_getppid, 0, 0, 0, 0, 0, 0) != sealed.parent)
                SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
        }
    }
}

/* Tell the client: the reply is in the area. */
INLINE void reply(uint32_t kind)
{
    struct vsgx_client *c = &vsgx_client;
    c->reply = kind;
    __atomic_add_fetch(&c->reply_seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->client_sleeping, __ATOMIC_SEQ_CST))
        SYSCALL(SYS_futex, &c->reply_seq, FUTEX_WAKE, 1, 0, 0, 0);
}

/* The page operations of the current command (the filter checks each). */
INLINE int apply_ops(void)
{
    uint32_t count = vsgx_command.nops;
    if (count > VSGX_MAX_OPS)
        count = VSGX_MAX_OPS;
    for (uint32_t i = 0; i < count; i++) {
        const uint64_t *op = &vsgx_command.ops[i * VSGX_OP_WORDS];
        uint64_t kind = op[0], address = op[1], length = op[2], arg = op[3];
        long r;
        if (kind == VSGX_OP_PROTECT) {
            r = SYSCALL(SYS_mprotect, address, length, arg & 7, 0, 0, 0);
        } else if (kind == VSGX_OP_MAP) {
            /* arg: pool slot << 1 | writable */
            r = SYSCALL(SYS_mmap, address, 4096, (arg & 1) ? PROT_RW : PROT_READ,
                        MAP_SHARED | MAP_FIXED_NOREPLACE, sealed.pool_fd, (arg >> 1) * 4096);
            if (r >= 0 && (uint64_t)r != address)
                r = -17; /* a kernel without MAP_FIXED_NOREPLACE */
        } else if (kind == VSGX_OP_UNMAP) {
            r = SYSCALL(SYS_munmap, address, 4096, 0, 0, 0, 0);
        } else {
            r = -22;
        }
        if (r < 0) {
            vsgx_report.op_index = i;
            vsgx_report.op_errno = (uint32_t)-r;
            return -1;
        }
    }
    return 0;
}

INLINE int canonical(uint64_t address)
{
    return address < (1ull << 47) || address >= 0xFFFF800000000000ull;
}

INLINE int in_elrange(uint64_t address)
{
    return address >= sealed.enclave_begin && address < sealed.enclave_end;
}

/* Before any entry (the client's or the EVM's): unmap each client slot
   that no longer holds, for the client, the page mapped from it. The
   client's flag is taken before the scan (a drop it makes meanwhile sets it
   again); ours says the scan has not run to its end, so a signal that cuts
   it short (runner code may run unblocked) loses nothing: it is done again,
   and the mapping goes before our record of it. */
INLINE void reconcile_slots(void)
{
    struct vsgx_client *c = &vsgx_client;
    if (!__atomic_exchange_n(&c->slots_dropped, 0, __ATOMIC_ACQ_REL) && !vsgx_fast.reconciling)
        return;
    vsgx_fast.reconciling = 1;
    for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++) {
        uint64_t page = vsgx_fast.slot_page[slot];
        if (!page || __atomic_load_n(&c->slot_pages[slot], __ATOMIC_ACQUIRE) == page)
            continue;
        SYSCALL(SYS_munmap, page, 4096, 0, 0, 0, 0);
        vsgx_fast.slot_page[slot] = 0;
    }
    vsgx_fast.reconciling = 0;
}

/* One command of the EVM. RUN goes into the enclave and does not return. */
INLINE void run_command(void)
{
    vsgx_scratch.last_cmd = __atomic_load_n(&vsgx_command.seq, __ATOMIC_ACQUIRE);
    uint32_t cmd = vsgx_command.command;
    if (cmd == VSGX_CMD_QUIT)
        SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
    if (cmd != VSGX_CMD_RUN && cmd != VSGX_CMD_OPS) {
        vsgx_report.op_index = ~0u;
        vsgx_report.op_errno = 22;
        report(VSGX_STOP_OP_FAILED);
        return;
    }
    if (cmd == VSGX_CMD_RUN)
        reconcile_slots();  /* an ERESUME through the EVM, say */
    if (apply_ops() < 0) {
        report(VSGX_STOP_OP_FAILED);
        return;
    }
    if (cmd == VSGX_CMD_RUN) {
        copy(vsgx_entry_regs, vsgx_command.regs, sizeof(vsgx_entry_regs));
        vsgx_entry_load_fpu = vsgx_command.load_fpu != 0;
        if (vsgx_entry_load_fpu)
            copy(vsgx_entry_fpu, vsgx_command.fpu, sizeof(vsgx_entry_fpu));
        vsgx_enter();
    }
    report(VSGX_STOP_OPS_DONE);
}

/* The grant as the EVM last wrote it, read under its seqlock. 0 if there
   is none (or it is being written). A new grant ends a handed-over entry
   and brings the TCS's CSSA. */
struct grant {
    uint32_t seq, flags;
    uint64_t version, epoch, oentry, ofsbase, ogsbase;
    uint32_t cssa, nssa;
    uint64_t frame_size;
    uint64_t frames[VSGX_GRANT_FRAMES];
};

INLINE int read_grant(struct grant *g)
{
    const struct vsgx_command *c = &vsgx_command;
    uint32_t seq = __atomic_load_n(&c->grant_seq, __ATOMIC_ACQUIRE);
    if (seq & 1)
        return 0;
    uint32_t valid = c->grant_valid;
    g->seq = seq;
    g->flags = c->grant_flags;
    g->version = c->grant_version;
    g->epoch = c->grant_epoch;
    g->oentry = c->grant_oentry;
    g->ofsbase = c->grant_ofsbase;
    g->ogsbase = c->grant_ogsbase;
    g->cssa = c->grant_cssa;
    g->nssa = c->grant_nssa;
    g->frame_size = c->grant_frame_size;
    copy(g->frames, c->grant_frames, sizeof(g->frames));
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&c->grant_seq, __ATOMIC_ACQUIRE) != seq)
        return 0;
    struct fast *f = &vsgx_fast;
    if (seq != f->grant_seq) {
        f->grant_seq = seq;
        f->cssa = g->cssa;
        f->handed_over = 0;
    }
    return valid == 1 && !f->handed_over;
}


INLINE void refuse(void)
{
    __atomic_store_n(&vsgx_report.fast_inside, 0, __ATOMIC_SEQ_CST);
    vsgx_fast.in_request = 0;
    reply(VSGX_REPLY_REFUSED);
}

/* GPRSGX is the last 184 bytes of an SSA frame; URSP and URBP at 144. */
#define GPRSGX_SIZE 184

/* EENTER from the client, checked against the grant. Anything the runner
   cannot decide alone (no grant, a stale one, CSSA == NSSA, an SSA frame
   the grant does not describe, a non-canonical AEP) is refused: the client
   then makes the entry through the EVM, whose checks come in the SDM's
   order and give the exact fault. */
ENTRY_FN void fast_eenter(void)
{
    struct fast *f = &vsgx_fast;
    struct vsgx_client *c = &vsgx_client;
    copy(f->request_regs, c->regs, sizeof(f->request_regs));
    uint64_t return_rip = c->return_rip;
    reconcile_slots();
    struct grant g;
    if (!read_grant(&g)) {
        refuse();
        return;
    }
    uint64_t aep = f->request_regs[VSGX_REG_RCX];
    uint32_t cssa = f->cssa;
    if (!canonical(aep) || cssa >= g.nssa || cssa >= VSGX_GRANT_FRAMES || !g.frames[cssa]) {
        refuse();
        return;
    }
    uint64_t frame = g.frames[cssa];
    /* Inside before the last look at the version: the EVM bumps the
       version before it looks at who is inside (Dekker), so one of the two
       sees the other. */
    vsgx_report.fast_entry_epoch = g.epoch;
    __atomic_store_n(&vsgx_report.fast_inside, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&vsgx_state.version, __ATOMIC_SEQ_CST) != g.version ||
        __atomic_load_n(&vsgx_command.grant_seq, __ATOMIC_SEQ_CST) != g.seq) {
        refuse();
        return;
    }
    uint64_t *gprsgx = (uint64_t *)(frame + g.frame_size - GPRSGX_SIZE);
    gprsgx[18] = f->request_regs[VSGX_REG_RSP];
    gprsgx[19] = f->request_regs[VSGX_REG_RBP];
    f->aep = aep;
    f->entry_fs = f->request_regs[VSGX_REG_FSBASE];
    f->entry_gs = f->request_regs[VSGX_REG_GSBASE];
    f->code_readable = (g.flags & VSGX_GRANT_CODE_READABLE) != 0;
    f->interrupt_seen = __atomic_load_n(&vsgx_command.interrupt_seq, __ATOMIC_ACQUIRE);
    copy(vsgx_entry_regs, f->request_regs, sizeof(vsgx_entry_regs));
    vsgx_entry_regs[VSGX_REG_RAX] = cssa;
    vsgx_entry_regs[VSGX_REG_RCX] = return_rip;
    vsgx_entry_regs[VSGX_REG_RIP] = g.oentry;
    vsgx_entry_regs[VSGX_REG_FSBASE] = g.ofsbase;
    vsgx_entry_regs[VSGX_REG_GSBASE] = g.ogsbase;
    vsgx_entry_load_fpu = 0;
    vsgx_report.fast_handed_over = 0;
    vsgx_report.fast_entries++;
    c->entries++;
    c->runner_cpu = this_cpu();
    f->active = 1;
    vsgx_enter(); /* which ends in_request */
}

/* A request of the client (enters, or answers at once). */
INLINE void fast_request(void)
{
    struct vsgx_client *c = &vsgx_client;
    uint32_t seq = __atomic_load_n(&c->request_seq, __ATOMIC_ACQUIRE);
    if (seq == vsgx_fast.last_req)
        return;
    /* Working on it before it is taken: an interrupt from here on (runner
       code may run with signals unblocked) refuses it, never loses it. */
    vsgx_fast.in_request = 1;
    vsgx_fast.last_req = seq;
    uint32_t kind = c->request;
    if (kind == VSGX_REQ_EENTER) {
        fast_eenter();
        return;
    }
    vsgx_fast.in_request = 0;
    reply(kind == VSGX_REQ_ERESUME ? VSGX_REPLY_REFUSED : VSGX_REPLY_BAD);
}

/* Serve the EVM and the client until one of them sends us into the
   enclave. */
ENTRY_FN __attribute__((noreturn)) void vsgx_serve(void)
{
    for (;;) {
        wait_for_work();
        if (__atomic_load_n(&vsgx_command.seq, __ATOMIC_ACQUIRE) != vsgx_scratch.last_cmd) {
            /* The EVM's commands run as a handler does (interrupts blocked):
               after the gate, a trap gets there first. */
            if (vsgx_fast.unblocked)
                vsgx_rearm_trap();
            run_command();
        } else {
            fast_request();
        }
    }
}

/* The registers of a signal frame, in vsgx.evm.executor order (RFLAGS
   and RIP included; FS and GS bases left as they are in ``regs``). */
INLINE void regs_from_frame(uint64_t *regs, const uint8_t *uc)
{
    regs[VSGX_REG_RAX] = MC(uc, MC_RAX);
    regs[VSGX_REG_RCX] = MC(uc, MC_RCX);
    regs[VSGX_REG_RDX] = MC(uc, MC_RDX);
    regs[VSGX_REG_RBX] = MC(uc, MC_RBX);
    regs[VSGX_REG_RSP] = MC(uc, MC_RSP);
    regs[VSGX_REG_RBP] = MC(uc, MC_RBP);
    regs[VSGX_REG_RSI] = MC(uc, MC_RSI);
    regs[VSGX_REG_RDI] = MC(uc, MC_RDI);
    regs[VSGX_REG_R8] = MC(uc, MC_R8);
    regs[VSGX_REG_R9] = MC(uc, MC_R9);
    regs[VSGX_REG_R10] = MC(uc, MC_R10);
    regs[VSGX_REG_R11] = MC(uc, MC_R11);
    regs[VSGX_REG_R12] = MC(uc, MC_R12);
    regs[VSGX_REG_R13] = MC(uc, MC_R13);
    regs[VSGX_REG_R14] = MC(uc, MC_R14);
    regs[VSGX_REG_R15] = MC(uc, MC_R15);
    regs[VSGX_REG_RFLAGS] = MC(uc, MC_EFL);
    regs[VSGX_REG_RIP] = MC(uc, MC_RIP);
}

/* Back into the enclave where the signal stopped it (its FPU state is
   the frame's: vsgx_scratch.fpstate). */
INLINE __attribute__((noreturn)) void resume_from_frame(const uint8_t *uc)
{
    regs_from_frame(vsgx_entry_regs, uc);
    get_bases(&vsgx_entry_regs[VSGX_REG_FSBASE], &vsgx_entry_regs[VSGX_REG_GSBASE]);
    vsgx_entry_load_fpu = 0;
    vsgx_enter();
}

/* RFLAGS bits with an architectural meaning, less RF (as the EVM keeps). */
#define KEPT_FLAGS (0x3F7FD5 & ~(1u << 16))

/* EEXIT (SDM EEXIT): RIP = RBX, RCX = the AEP, the rest as enclave code
   left them; the thread is no longer inside. */
INLINE void fast_eexit(uint64_t *regs)
{
    struct fast *f = &vsgx_fast;
    struct vsgx_client *c = &vsgx_client;
    regs[VSGX_REG_RIP] = regs[VSGX_REG_RBX];
    regs[VSGX_REG_RCX] = f->aep;
    regs[VSGX_REG_RFLAGS] = (regs[VSGX_REG_RFLAGS] & KEPT_FLAGS) | 0x2;
    regs[VSGX_REG_FSBASE] = f->entry_fs;
    regs[VSGX_REG_GSBASE] = f->entry_gs;
    copy(c->regs, regs, VSGX_REG_COUNT * sizeof(uint64_t));
    f->active = 0;
    __atomic_store_n(&vsgx_report.fast_inside, 0, __ATOMIC_SEQ_CST);
    reply(VSGX_REPLY_EEXIT);
}

/* Whether ``address`` is a rewritten EEXIT site (vsgx.evm.fast_exits). */
INLINE int is_exit_site(uint64_t address)
{
    uint32_t count = vsgx_command.exit_site_count;
    if (count > VSGX_MAX_EXIT_SITES)
        count = VSGX_MAX_EXIT_SITES;
    for (uint32_t i = 0; i < count; i++)
        if (vsgx_command.exit_sites[i] == address)
            return 1;
    return 0;
}

/* Which client slot maps ``page``, or -1. */
INLINE int client_slot_of(uint64_t page)
{
    for (int i = 0; i < VSGX_CLIENT_SLOTS; i++)
        if (vsgx_fast.slot_page[i] == page)
            return i;
    return -1;
}

/* Ask the client for an untrusted page the enclave touched; 1 once it is
   mapped from the slot the client filled, 0 if the client has none. */
INLINE int fast_page(uint64_t page, int write)
{
    struct vsgx_client *c = &vsgx_client;
    c->page_address = page;
    c->page_write = (uint32_t)write;
    c->page_requests++;
    reply(VSGX_REPLY_PAGE);
    for (;;) {
        wait_for_work();
        if (__atomic_load_n(&vsgx_command.seq, __ATOMIC_ACQUIRE) != vsgx_scratch.last_cmd) {
            /* Only QUIT makes sense while a fast entry runs. */
            vsgx_scratch.last_cmd = __atomic_load_n(&vsgx_command.seq, __ATOMIC_ACQUIRE);
            if (vsgx_command.command == VSGX_CMD_QUIT)
                SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
            vsgx_report.op_index = ~0u;
            vsgx_report.op_errno = 16; /* EBUSY */
            report(VSGX_STOP_OP_FAILED);
            continue;
        }
        uint32_t seq = __atomic_load_n(&c->request_seq, __ATOMIC_ACQUIRE);
        if (seq == vsgx_fast.last_req)
            continue;
        vsgx_fast.last_req = seq;
        break;
    }
    reconcile_slots();  /* a slot the client took back for this page, say */
    uint32_t kind = c->request, slot = c->page_slot, state = c->page_state;
    if (kind != VSGX_REQ_PAGE || slot >= VSGX_CLIENT_SLOTS ||
        (state != VSGX_PAGE_READ_ONLY && state != VSGX_PAGE_WRITABLE))
        return 0;
    if (vsgx_fast.slot_page[slot]) {
        SYSCALL(SYS_munmap, vsgx_fast.slot_page[slot], 4096, 0, 0, 0, 0);
        vsgx_fast.slot_page[slot] = 0;
    }
    /* The page faulted, so no other slot maps it: another record of it is
       stale (its mapping went with a cut-short reconcile, or enclave code
       unmapped it) and must not be taken for this one. */
    for (uint32_t i = 0; i < VSGX_CLIENT_SLOTS; i++)
        if (vsgx_fast.slot_page[i] == page)
            vsgx_fast.slot_page[i] = 0;
    long r = SYSCALL(SYS_mmap, page, 4096, state == VSGX_PAGE_WRITABLE ? PROT_RW : PROT_READ,
                     MAP_SHARED | MAP_FIXED_NOREPLACE, sealed.pool_fd,
                     (uint64_t)(VSGX_PYTHON_SLOTS + slot) * 4096);
    if (r != (long)page) {
        if (r >= 0)
            SYSCALL(SYS_munmap, r, 4096, 0, 0, 0, 0);
        return 0;
    }
    vsgx_fast.slot_page[slot] = page;
    return 1;
}

/* How this CPU refuses ENCLU outside SGX: #UD (SIGILL) on AMD; #GP(0) on
   Intel parts without SGX enabled, or for EENTER and ERESUME a #PF on a
   data access near RBX (SIGSEGV either way). The bytes at RIP then tell an
   ENCLU from another fault; a fetch #PF stays a #PF. */
INLINE int enclu_trap(long sig, const uint8_t *uc)
{
    return sig == SIGILL ||
           (sig == SIGSEGV && (MC(uc, MC_TRAPNO) == 13 ||
                               (MC(uc, MC_TRAPNO) == 14 && !(MC(uc, MC_ERR) & 0x10))));
}

/* A stop of a fast entry: what the runner completes alone (EEXIT, the
   alarm, an untrusted page the client has) does not return; anything else
   returns, and the caller hands the entry over to the EVM. */
INLINE void fast_stop(long sig, const uint8_t *uc, int window)
{
    struct fast *f = &vsgx_fast;
    int interrupt = __atomic_load_n(&vsgx_command.interrupt_seq, __ATOMIC_ACQUIRE) !=
                    f->interrupt_seen;
    if (window) {
        /* The enclave has not started: enter again, unless interrupted. */
        if (sig == SIGUSR1 && interrupt)
            return;
        vsgx_enter();
    }
    /* Before anything resumes: a stop outside ELRANGE is enclave code
       running runner code (a jump there), which the EVM makes #GP(0); an
       alarm that resumed it would leave it there for good. */
    uint64_t rip = MC(uc, MC_RIP);
    if (!in_elrange(rip) || (MC(uc, MC_CSGSFS) & 0xffff) != VSGX_USER_CS)
        return; /* ... or it left 64-bit mode (#UD): the EVM's */
    if (sig == SIGALRM || (sig == SIGUSR1 && !interrupt))
        resume_from_frame(uc);
    if (sig == SIGUSR1)
        return;
    if (enclu_trap(sig, uc)) {
        const uint8_t *code = (const uint8_t *)rip;
        int enclu = f->code_readable && rip + 3 <= sealed.enclave_end && code[0] == 0x0f &&
                    code[1] == 0x01 && code[2] == 0xd7;
        if (enclu && (uint32_t)MC(uc, MC_RAX) == 4 && canonical(MC(uc, MC_RBX))) {
            uint64_t regs[VSGX_REG_COUNT];
            regs_from_frame(regs, uc);
            fast_eexit(regs);
            vsgx_serve();
        }
        if (enclu || sig == SIGILL)
            return;
    }
    if (sig == SIGTRAP && MC(uc, MC_TRAPNO) == 3) {
        /* Fast-exit mode: the INT3 the EVM wrote over an EEXIT site's
           ENCLU (the sites come from the read-only COMMAND area). */
        const uint8_t *code = (const uint8_t *)(rip - 1);
        if ((uint32_t)MC(uc, MC_RAX) == 4 && canonical(MC(uc, MC_RBX)) &&
            is_exit_site(rip - 1) && f->code_readable && code[0] == 0xcc && code[1] == 0x66 &&
            code[2] == 0x90) {
            uint64_t regs[VSGX_REG_COUNT];
            regs_from_frame(regs, uc);
            fast_eexit(regs);
            vsgx_serve();
        }
        return;
    }
    if ((sig == SIGSEGV || sig == SIGBUS) && MC(uc, MC_TRAPNO) == 14) {
        uint64_t cr2 = MC(uc, MC_CR2), error = MC(uc, MC_ERR);
        if (in_elrange(cr2) || cr2 >= (1ull << 47) || (error & 0x10))
            return; /* ELRANGE (the EPCM decides), or a fetch: the EVM's */
        uint64_t page = cr2 & ~4095ull;
        int slot = client_slot_of(page);
        if (slot >= 0) {
            vsgx_report.fault_client_slot = (uint32_t)slot + 1;
            return;
        }
        if (!(error & 1) && fast_page(page, (error & 2) != 0))
            resume_from_frame(uc);
    }
}

/* A fault in the runner's own work on a client request (enclave code
   took a page the runner writes): the request is refused, the client goes
   to the EVM. */
INLINE __attribute__((noreturn)) void request_failed(void)
{
    vsgx_fast.active = 0;
    vsgx_fast.last_req = __atomic_load_n(&vsgx_client.request_seq, __ATOMIC_ACQUIRE);
    refuse();
    vsgx_serve();
}

/* A kernel-delivered signal (the marker was blocked): a fast entry's stop
   the runner completes alone, or a report of the raw signal (the EVM
   decides what it means). */
ENTRY_FN __attribute__((noreturn)) void vsgx_delivered(long sig, const uint8_t *info,
                                                      const uint8_t *uc)
{
    struct vsgx_report *r = &vsgx_report;
    uint64_t rip = MC(uc, MC_RIP);
    uint32_t kind = VSGX_STOP_SIGNAL;
    const uint8_t *fp = (const uint8_t *)MC(uc, MC_FPSTATE);
    if (sig == SIGALRM) {
        __atomic_add_fetch(&vsgx_client.heartbeat, 1, __ATOMIC_RELAXED);
        if (SYSCALL(SYS_getppid, 0, 0, 0, 0, 0, 0) != sealed.parent)
            SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
    }
    int async = sig == SIGUSR1 || sig == SIGALRM;
    int was_unblocked = vsgx_fast.unblocked;
    vsgx_fast.unblocked = 0; /* a handler now: the interrupts are blocked */
    vsgx_scratch.fpstate = (uint64_t)fp;
    /* The trap of vsgx_serve before a command (after the gate). */
    if (sig == SIGILL && rip == (uint64_t)vsgx_rearm)
        vsgx_serve();
    /* The gate's exit, interrupted: it goes on, and ends in an exit. */
    if (async && rip >= (uint64_t)vsgx_gate_begin && rip < (uint64_t)vsgx_gate_end)
        resume_from_frame(uc);
    /* From vsgx_enter's first instruction to the IRETQ (with signals
       blocked, only from the unmask on): the enclave has not started. */
    int window = async && rip >= (uint64_t)vsgx_enter && rip <= (uint64_t)vsgx_window_end;
    if (vsgx_fast.in_request && !window)
        request_failed();
    /* Waiting for work after the gate: nothing to report. */
    if (async && was_unblocked && !window && !vsgx_fast.active && !in_elrange(rip))
        vsgx_serve();
    r->fault_client_slot = 0;
    /* ... where vsgx_enter was taking the gate's exit back to its work. */
    if (window && vsgx_entry_regs[VSGX_REG_RIP] >= (uint64_t)vsgx_gate_begin &&
        vsgx_entry_regs[VSGX_REG_RIP] < (uint64_t)vsgx_gate_end)
        vsgx_enter();
    if (vsgx_fast.active)
        fast_stop(sig, uc, window);
    if (window) {
        /* Between unmasking and IRETQ: the enclave has not started. */
        kind = VSGX_STOP_BEFORE_ENTRY;
        copy(r->regs, vsgx_entry_regs, 18 * 8);
    } else {
        regs_from_frame(r->regs, uc);
    }
    get_bases(&r->regs[VSGX_REG_FSBASE], &r->regs[VSGX_REG_GSBASE]);
    if (fp)
        copy(r->fpu, fp, 512);
    if ((sig == SIGSEGV || sig == SIGBUS) && MC(uc, MC_TRAPNO) == 14 &&
        !in_elrange(MC(uc, MC_CR2))) {
        /* The EVM's executor does not know the client's slots. */
        int slot = client_slot_of(MC(uc, MC_CR2) & ~4095ull);
        r->fault_client_slot = slot >= 0 ? (uint32_t)slot + 1 : 0;
    }
    r->signo = (uint32_t)sig;
    r->cs = (uint32_t)(MC(uc, MC_CSGSFS) & 0xffff);
    r->code = *(const uint32_t *)(info + 8);
    r->trapno = MC(uc, MC_TRAPNO);
    r->error = MC(uc, MC_ERR);
    r->cr2 = MC(uc, MC_CR2);
    r->si_addr = *(const uint64_t *)(info + 16);
    r->sys_nr = *(const uint32_t *)(info + 24);
    r->sys_arch = *(const uint32_t *)(info + 28);
    if (vsgx_fast.active) {
        /* The EVM goes on with this entry when the client asks it to. */
        vsgx_fast.active = 0;
        vsgx_fast.handed_over = 1;
        r->fast_handed_over = 1;
        report(kind);
        reply(VSGX_REPLY_HANDED_OVER);
        vsgx_serve();
    }
    report(kind);
    vsgx_serve();
}

/* The handler was entered by a jump (the marker was not blocked): on
   hardware that jump was a code fetch outside ELRANGE, #GP(0) with RIP at
   the handler. Report the registers captured at its first instruction and
   the live FPU state; there is no signal frame to resume from. */
/* The rest of a report of a stop no signal frame describes (a jump):
   its GPRs and RFLAGS are in the report already. */
INLINE void describe_jump(struct vsgx_report *r, uint64_t rip)
{
    r->regs[VSGX_REG_RIP] = rip;
    get_bases(&r->regs[VSGX_REG_FSBASE], &r->regs[VSGX_REG_GSBASE]);
    __asm__ volatile("fxsave64 %0" : "=m"(r->fpu));
    vsgx_scratch.fpstate = 0; /* the FPU state stays live */
    r->signo = 0;
    r->cs = VSGX_USER_CS;
    r->code = 0;
    r->trapno = 0;
    r->error = 0;
    r->cr2 = 0;
    r->si_addr = 0;
    r->fault_client_slot = 0;
}

ENTRY_FN __attribute__((noreturn)) void vsgx_not_delivered(void)
{
    struct vsgx_report *r = &vsgx_report;
    copy(r->regs, vsgx_scratch.captured, 16 * 8);
    r->regs[VSGX_REG_RFLAGS] = vsgx_scratch.captured_flags;
    describe_jump(r, (uint64_t)vsgx_handler);
    report(VSGX_STOP_NOT_DELIVERED);
    vsgx_serve();
}

/* The exit gate's page (vsgx.evm.runner.layout.exit_gate_address). */
#define EXIT_GATE(base) ((base) - 4096)

/* Fast-exit mode: enclave code came through an exit gate entry (an EEXIT
   site of its runtime rewritten into a jump there; the entry set RAX = 4
   and ECX = its index). On the fast path the runner completes the EEXIT as
   for a trapped one, replies, and waits for work with no signal blocked:
   no trap and no system call on the way out, none on the way back in. Any
   other entry is reported as a stop at the gate entry, which the EVM
   carries out as the EEXIT it stands for. All of this lies in
   [vsgx_gate_begin, vsgx_gate_end): an interrupt there resumes it. */
#define GATE_FN __attribute__((section(".text.vsgx_gate"), noinline, used))
GATE_FN __attribute__((noreturn)) void vsgx_gate_exit(void)
{
    struct fast *f = &vsgx_fast;
    uint64_t *g = vsgx_gate_regs;
    uint32_t index = (uint32_t)(g[VSGX_REG_RCX] % VSGX_MAX_EXIT_SITES);
    uint64_t entry = EXIT_GATE(sealed.enclave_begin) + VSGX_GATE_ENTRY_SIZE * index;
    g[VSGX_REG_RAX] = 4;
    vsgx_scratch.fpstate = 0; /* the enclave's FPU state stays live */
    /* Only an entry a site jumps to is an EEXIT; the EVM makes the rest #GP. */
    if (f->active && !f->in_request && canonical(g[VSGX_REG_RBX]) &&
        ((vsgx_command.gate_entries >> index) & 1)) {
        uint64_t regs[VSGX_REG_COUNT];
        copy(regs, g, sizeof(regs));
        vsgx_report.gate_exits++;
        fast_eexit(regs);
        vsgx_serve();
    }
    struct vsgx_report *r = &vsgx_report;
    copy(r->regs, g, 18 * 8);
    describe_jump(r, entry);
    if (f->active) {
        f->active = 0;
        f->handed_over = 1;
        r->fast_handed_over = 1;
        report(VSGX_STOP_GATE);
        reply(VSGX_REPLY_HANDED_OVER);
        vsgx_serve();
    }
    report(VSGX_STOP_GATE);
    vsgx_serve();
}

#define GATE_REG(i) "vsgx_gate_regs+8*" #i "(%rip)"

/* Where every gate entry jumps: say that runner code now runs unblocked,
   keep the registers, and leave the enclave's stack before touching one. */
__asm__(".section .text.vsgx_gate,\"ax\",@progbits\n"
        ".globl vsgx_gate_entry\n"
        ".type vsgx_gate_entry,@function\n"
        "vsgx_gate_entry:\n"
        "    movl $1, vsgx_fast+" XSTR(FAST_OFF_UNBLOCKED) "(%rip)\n"
        "    mov %rsp, " GATE_REG(4) "\n"
        "    lea vsgx_gate_stack+" XSTR(GATE_STACK_SIZE) "(%rip), %rsp\n"
        "    pushfq\n"
        "    popq " GATE_REG(16) "\n"
        "    pushq $2\n"
        "    popfq\n" /* DF, AC and TF clear */
        "    mov %rax, " GATE_REG(0) "\n"
        "    mov %rcx, " GATE_REG(1) "\n"
        "    mov %rdx, " GATE_REG(2) "\n"
        "    mov %rbx, " GATE_REG(3) "\n"
        "    mov %rbp, " GATE_REG(5) "\n"
        "    mov %rsi, " GATE_REG(6) "\n"
        "    mov %rdi, " GATE_REG(7) "\n"
        "    mov %r8, " GATE_REG(8) "\n"
        "    mov %r9, " GATE_REG(9) "\n"
        "    mov %r10, " GATE_REG(10) "\n"
        "    mov %r11, " GATE_REG(11) "\n"
        "    mov %r12, " GATE_REG(12) "\n"
        "    mov %r13, " GATE_REG(13) "\n"
        "    mov %r14, " GATE_REG(14) "\n"
        "    mov %r15, " GATE_REG(15) "\n"
        "    call vsgx_gate_exit\n"
        "    ud2\n"
        ".previous\n");

/* vsgx_serve's way back into handler context before an EVM command. */
__asm__(".section .text.vsgx_entry,\"ax\",@progbits\n"
        ".globl vsgx_rearm_trap\n"
        ".type vsgx_rearm_trap,@function\n"
        "vsgx_rearm_trap:\n"
        ".globl vsgx_rearm\n"
        "vsgx_rearm:\n"
        "    ud2\n"
        ".previous\n");

/* The last of set-up, from here because it makes the rest of the runner's
   code inaccessible: seal, unmap what the kernel mapped for us, install the
   filter, report READY. A failure leaves the message set-up wrote. */
ENTRY_FN __attribute__((noreturn)) void vsgx_finish(const struct sock_fprog *prog)
{
    long bad = SYSCALL(SYS_mprotect, vsgx_sealable_begin,
                       vsgx_sealable_end - vsgx_sealable_begin, PROT_NONE, 0, 0, 0);
    bad |= SYSCALL(SYS_mprotect, &vsgx_sealed, sizeof(vsgx_sealed), PROT_READ, 0, 0, 0);
    for (uint32_t i = 0; i < vsgx_unmap_count && i < UNMAP_MAX; i++)
        bad |= SYSCALL(SYS_munmap, vsgx_unmap[i][0], vsgx_unmap[i][1], 0, 0, 0, 0);
    if (!bad)
        bad = SYSCALL(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, prog, 0, 0, 0);
    if (bad) {
        report(VSGX_STOP_DIED);
        SYSCALL(SYS_exit_group, 99, 0, 0, 0, 0, 0);
    }
    vsgx_report.message[0] = 0;
    report(VSGX_STOP_READY);
    vsgx_serve();
}

#define SCRATCH(off) "vsgx_scratch+" #off "(%rip)"
#define ENTRY_REG(i) "vsgx_entry_regs+8*" #i "(%rip)"

/* The handler of every signal. It may also be reached by a jump from
   enclave code, with any registers: so it first stores the registers
   RIP-relative (no stack, no system call yet), then asks the kernel for the
   blocked mask. Only a kernel delivery blocks the marker signal, and enclave
   code can never block a signal itself; marker absent ⇒ a jump.

   A jump past this check (or anywhere else in this section) runs runner
   code with registers and memory the enclave chose. Everything it can reach
   is a system call the filter allows (harmless by construction), a fault
   (reported as one, RIP outside ELRANGE), or a report whose contents the
   enclave chose — an event it could cause itself, which the EVM validates
   like every report. It may even go on running after such a report, as
   another thread of the enclave would. */
__asm__(".section .text.vsgx_entry,\"ax\",@progbits\n"
        ".globl vsgx_handler\n"
        ".type vsgx_handler,@function\n"
        "vsgx_handler:\n"
        "    mov %rax, " SCRATCH(0) "\n"
        "    mov %rcx, " SCRATCH(8) "\n"
        "    mov %rdx, " SCRATCH(16) "\n"
        "    mov %rbx, " SCRATCH(24) "\n"
        "    mov %rsp, " SCRATCH(32) "\n"
        "    mov %rbp, " SCRATCH(40) "\n"
        "    mov %rsi, " SCRATCH(48) "\n"
        "    mov %rdi, " SCRATCH(56) "\n"
        "    mov %r8, " SCRATCH(64) "\n"
        "    mov %r9, " SCRATCH(72) "\n"
        "    mov %r10, " SCRATCH(80) "\n"
        "    mov %r11, " SCRATCH(88) "\n"
        "    mov %r12, " SCRATCH(96) "\n"
        "    mov %r13, " SCRATCH(104) "\n"
        "    mov %r14, " SCRATCH(112) "\n"
        "    mov %r15, " SCRATCH(120) "\n"
        /* A jump's RSP may be anything: a fault here is a kernel-delivered
           SIGSEGV, reported like any other. */
        "    pushfq\n"
        "    popq " SCRATCH(128) "\n"
        "    pushq $2\n"
        "    popfq\n" /* DF, AC and TF clear */
        "    movq $0, " SCRATCH(136) "\n"
        "    mov $" XSTR(SYS_rt_sigprocmask) ", %eax\n"
        "    xor %edi, %edi\n"
        "    xor %esi, %esi\n"
        "    lea " SCRATCH(136) ", %rdx\n"
        "    mov $8, %r10d\n"
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jnz 1f\n"
        "    btq $" XSTR(SIG_MARKER) "-1, " SCRATCH(136) "\n"
        "    jnc 1f\n"
        "    mov " SCRATCH(56) ", %rdi\n"
        "    mov " SCRATCH(48) ", %rsi\n"
        "    mov " SCRATCH(16) ", %rdx\n"
        "    and $-16, %rsp\n"
        "    call vsgx_delivered\n"
        "    ud2\n"
        "1:  lea vsgx_alt_stack+" XSTR(ALT_STACK_SIZE) "(%rip), %rsp\n"
        "    call vsgx_not_delivered\n"
        "    ud2\n"
        /* The signal frames' return address: the runner never returns. */
        ".globl vsgx_no_return\n"
        "vsgx_no_return:\n"
        "    ud2\n"
        ".previous\n");

/* Into the enclave: FS/GS, FPU state, unmask, then IRETQ with a user-mode
   frame (CS 0x33, SS 0x2b, sanitized RFLAGS) and GPRs from the entry
   block (vsgx_entry_regs). A signal whose RIP lies in [vsgx_window_begin, vsgx_window_end]
   came before the enclave's first instruction. */
__asm__(".section .text.vsgx_entry,\"ax\",@progbits\n"
        ".globl vsgx_enter\n"
        ".type vsgx_enter,@function\n"
        "vsgx_enter:\n"
        "    movl $0, vsgx_fast+" XSTR(FAST_OFF_IN_REQUEST) "(%rip)\n"
        "    lea vsgx_iret_stack+64(%rip), %rsp\n"
        "    cmpl $0, vsgx_sealed+" XSTR(SEALED_OFF_FSGSBASE) "(%rip)\n"
        "    je 1f\n"
        "    mov " ENTRY_REG(18) ", %rax\n"
        "    wrfsbase %rax\n"
        "    mov " ENTRY_REG(19) ", %rax\n"
        "    wrgsbase %rax\n"
        "    jmp 2f\n"
        "1:  mov $" XSTR(SYS_arch_prctl) ", %eax\n"
        "    mov $" XSTR(ARCH_SET_FS) ", %edi\n"
        "    mov " ENTRY_REG(18) ", %rsi\n"
        "    syscall\n"
        "    mov $" XSTR(SYS_arch_prctl) ", %eax\n"
        "    mov $" XSTR(ARCH_SET_GS) ", %edi\n"
        "    mov " ENTRY_REG(19) ", %rsi\n"
        "    syscall\n"
        "2:  cmpl $0, vsgx_entry_load_fpu(%rip)\n"
        "    je 3f\n"
        "    fxrstor64 vsgx_entry_fpu(%rip)\n"
        "    jmp 5f\n"
        "3:  mov " SCRATCH(152) ", %rcx\n"
        "    test %rcx, %rcx\n"
        "    jz 5f\n"
        "    cmpl $0, vsgx_sealed+" XSTR(SEALED_OFF_XSAVE) "(%rip)\n"
        "    je 4f\n"
        "    mov vsgx_sealed+" XSTR(SEALED_OFF_XFEATURES) "(%rip), %eax\n"
        "    mov vsgx_sealed+" XSTR(SEALED_OFF_XFEATURES) "+4(%rip), %edx\n"
        "    xrstor64 (%rcx)\n"
        "    jmp 5f\n"
        "4:  fxrstor64 (%rcx)\n"
        "5:  cmpl $0, vsgx_fast+" XSTR(FAST_OFF_UNBLOCKED) "(%rip)\n"
        "    jne vsgx_window_begin\n" /* nothing is blocked: no system call */
        "    mov $" XSTR(SYS_rt_sigprocmask) ", %eax\n"
        "    mov $2, %edi\n" /* SIG_SETMASK */
        "    lea vsgx_sealed(%rip), %rsi\n" /* the empty mask */
        "    xor %edx, %edx\n"
        "    mov $8, %r10d\n"
        "    syscall\n"
        ".globl vsgx_window_begin\n"
        "vsgx_window_begin:\n"
        "    pushq $0x2b\n"
        "    pushq " ENTRY_REG(4) "\n"
        "    mov " ENTRY_REG(16) ", %rax\n"
        "    and $" XSTR(ENTRY_FLAGS) ", %rax\n"
        "    or $0x202, %rax\n"
        "    push %rax\n"
        "    pushq $" XSTR(VSGX_USER_CS) "\n"
        "    pushq " ENTRY_REG(17) "\n"
        "    mov " ENTRY_REG(0) ", %rax\n"
        "    mov " ENTRY_REG(1) ", %rcx\n"
        "    mov " ENTRY_REG(2) ", %rdx\n"
        "    mov " ENTRY_REG(3) ", %rbx\n"
        "    mov " ENTRY_REG(5) ", %rbp\n"
        "    mov " ENTRY_REG(6) ", %rsi\n"
        "    mov " ENTRY_REG(7) ", %rdi\n"
        "    mov " ENTRY_REG(8) ", %r8\n"
        "    mov " ENTRY_REG(9) ", %r9\n"
        "    mov " ENTRY_REG(10) ", %r10\n"
        "    mov " ENTRY_REG(11) ", %r11\n"
        "    mov " ENTRY_REG(12) ", %r12\n"
        "    mov " ENTRY_REG(13) ", %r13\n"
        "    mov " ENTRY_REG(14) ", %r14\n"
        "    mov " ENTRY_REG(15) ", %r15\n"
        ".globl vsgx_window_end\n"
        "vsgx_window_end:\n"
        "    iretq\n"
        ".previous\n");

/* ===================== set-up (sealed away before the filter) ============ */

/* Fast-exit mode's exit gate, the page below ELRANGE: entry i is
   `mov $4, %eax; mov $i, %ecx; jmp *vsgx_gate_entry`, the rest INT3.
   0 if the page is taken (the entries then fault, and the EVM carries out
   each such fault as its EEXIT). */
static int map_exit_gate(uint64_t base)
{
    uint64_t gate = EXIT_GATE(base);
    if (base < VSGX_GATE_LOWEST + 4096 ||
        (gate < (uint64_t)vsgx_image_end && gate + 4096 > (uint64_t)vsgx_image_begin))
        return 0;
    if (SYSCALL(SYS_mmap, gate, 4096, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                -1, 0) != (long)gate)
        return 0;
    uint8_t *page = (uint8_t *)gate;
    for (int i = 0; i < 4096; i++)
        page[i] = 0xcc;
    uint64_t target = (uint64_t)vsgx_gate_entry;
    for (uint32_t i = 0; i < VSGX_MAX_EXIT_SITES; i++) {
        uint8_t *e = page + VSGX_GATE_ENTRY_SIZE * i;
        const uint8_t code[16] = {0xb8, 4, 0, 0, 0, 0xb9, (uint8_t)i, (uint8_t)(i >> 8), 0, 0,
                                  0xff, 0x25, 0, 0, 0, 0};
        for (int k = 0; k < 16; k++)
            e[k] = code[k];
        for (int k = 0; k < 8; k++)
            e[16 + k] = (uint8_t)(target >> (8 * k));
    }
    return SYSCALL(SYS_mprotect, gate, 4096, PROT_READ | PROT_EXEC, 0, 0, 0) == 0;
}

static void die(const char *why)
{
    size_t n = 0;
    while (why[n] && n < sizeof(vsgx_report.message) - 1) {
        vsgx_report.message[n] = (uint8_t)why[n];
        n++;
    }
    vsgx_report.message[n] = 0;
    report(VSGX_STOP_DIED);
    SYSCALL(SYS_exit_group, 99, 0, 0, 0, 0, 0);
    for (;;)
        ;
}

static int parse(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    int base = 10;
    if (s[0] == '0' && s[1] == 'x') {
        base = 16;
        s += 2;
    }
    if (!*s)
        return -1;
    for (; *s; s++) {
        int d = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : -1;
        if (d < 0 || d >= base)
            return -1;
        v = v * (uint64_t)base + (uint64_t)d;
    }
    *out = v;
    return 0;
}

/* The start-up signal tells us what the kernel saves in a signal frame:
   the XRSTOR mask the entry section resumes with. */
static uint64_t startup_xfeatures;
static uint32_t startup_xsave, startup_seen;

static void on_startup(int sig, void *info, void *uc)
{
    (void)sig;
    (void)info;
    const uint8_t *fp = (const uint8_t *)MC(uc, MC_FPSTATE);
    if (fp && *(const uint32_t *)(fp + 464) == FP_XSTATE_MAGIC1) {
        startup_xsave = 1;
        startup_xfeatures = *(const uint64_t *)(fp + 472);
    }
    startup_seen = 1;
}

void vsgx_setup_restorer(void);
__asm__(".text\n"
        "vsgx_setup_restorer:\n"
        "    mov $" XSTR(SYS_rt_sigreturn) ", %eax\n"
        "    syscall\n"
        "    hlt\n");

static void set_action(int sig, void *handler, unsigned long flags, void *restorer)
{
    struct kernel_sigaction act = {handler, flags | SA_RESTORER, restorer, HANDLER_MASK};
    if (SYSCALL(SYS_rt_sigaction, sig, &act, 0, 8, 0, 0) < 0)
        die("rt_sigaction failed");
}

static uint8_t maps[64 * 1024];

/* Remember every mapping the kernel made that is neither the image nor
   ELRANGE (stack, vDSO, vvar): vsgx_finish unmaps them. */
static void find_foreign_mappings(void)
{
    long fd = SYSCALL(SYS_openat, AT_FDCWD, "/proc/self/maps", 0, 0, 0, 0);
    if (fd < 0)
        die("cannot read /proc/self/maps");
    size_t used = 0;
    for (;;) {
        long n = SYSCALL(SYS_read, fd, maps + used, sizeof(maps) - 1 - used, 0, 0, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
    }
    SYSCALL(SYS_close, fd, 0, 0, 0, 0, 0);
    maps[used] = 0;
    const uint8_t *p = maps;
    while (*p) {
        uint64_t start = 0, end = 0;
        while (*p && *p != '-') {
            int d = *p >= '0' && *p <= '9' ? *p - '0' : *p - 'a' + 10;
            start = start * 16 + (uint64_t)d;
            p++;
        }
        if (*p)
            p++;
        while (*p && *p != ' ') {
            int d = *p >= '0' && *p <= '9' ? *p - '0' : *p - 'a' + 10;
            end = end * 16 + (uint64_t)d;
            p++;
        }
        while (*p && *p != '\n')
            p++;
        if (*p)
            p++;
        int ours = (start >= (uint64_t)vsgx_image_begin && end <= (uint64_t)vsgx_image_end) ||
                   (start >= sealed.enclave_begin && end <= sealed.enclave_end);
        if (ours || start >= (1ull << 47))
            continue; /* [vsyscall] is not a mapping we can remove */
        if (vsgx_unmap_count >= UNMAP_MAX)
            die("too many foreign mappings");
        vsgx_unmap[vsgx_unmap_count][0] = start;
        vsgx_unmap[vsgx_unmap_count][1] = end - start;
        vsgx_unmap_count++;
    }
}

struct cap_header {
    uint32_t version;
    int pid;
};
struct cap_data {
    uint32_t effective, permitted, inheritable;
};

static int capabilities_gone(void)
{
    struct cap_header h = {0x20080522, 0};
    struct cap_data d[2] = {{0, 0, 0}, {0, 0, 0}};
    if (SYSCALL(SYS_capget, &h, d, 0, 0, 0, 0) < 0)
        return 0;
    return !(d[0].effective | d[0].permitted | d[1].effective | d[1].permitted);
}

/* Leave nothing worth stealing. Returns the ISOLATED_* bits achieved. */
static uint32_t isolate(const char *root)
{
    uint32_t bits = 0;
    if (SYSCALL(SYS_geteuid, 0, 0, 0, 0, 0, 0) == 0) {
        /* Root needs no user namespace for the others, and chroot must come
           before dropping the uid (the empty root is 0500). */
        if (SYSCALL(SYS_unshare, CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS, 0, 0,
                    0, 0, 0) == 0)
            bits |= VSGX_ISOLATED_MOUNT_NAMESPACE | VSGX_ISOLATED_NETWORK_NAMESPACE |
                    VSGX_ISOLATED_IPC_NAMESPACE | VSGX_ISOLATED_UTS_NAMESPACE;
        if (SYSCALL(SYS_chroot, root, 0, 0, 0, 0, 0) == 0 &&
            SYSCALL(SYS_chdir, "/", 0, 0, 0, 0, 0) == 0)
            bits |= VSGX_ISOLATED_EMPTY_ROOT;
        if (SYSCALL(SYS_setgroups, 0, 0, 0, 0, 0, 0) != 0 ||
            SYSCALL(SYS_setresgid, NOBODY, NOBODY, NOBODY, 0, 0, 0) != 0 ||
            SYSCALL(SYS_setresuid, NOBODY, NOBODY, NOBODY, 0, 0, 0) != 0)
            die("cannot drop root");
        bits |= VSGX_ISOLATED_UID_NOBODY;
    } else if (SYSCALL(SYS_unshare, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC |
                       CLONE_NEWUTS, 0, 0, 0, 0, 0) == 0) {
        bits |= VSGX_ISOLATED_USER_NAMESPACE | VSGX_ISOLATED_MOUNT_NAMESPACE |
                VSGX_ISOLATED_NETWORK_NAMESPACE | VSGX_ISOLATED_IPC_NAMESPACE |
                VSGX_ISOLATED_UTS_NAMESPACE;
        if (SYSCALL(SYS_chroot, root, 0, 0, 0, 0, 0) == 0 &&
            SYSCALL(SYS_chdir, "/", 0, 0, 0, 0, 0) == 0)
            bits |= VSGX_ISOLATED_EMPTY_ROOT;
        /* The namespace's full capability set: drop it. */
        struct cap_header h = {0x20080522, 0};
        struct cap_data d[2] = {{0, 0, 0}, {0, 0, 0}};
        if (SYSCALL(SYS_capset, &h, d, 0, 0, 0, 0) != 0)
            die("cannot drop capabilities");
    }
    if (capabilities_gone())
        bits |= VSGX_ISOLATED_NO_CAPABILITIES;
    if (SYSCALL(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0) != 0)
        die("cannot set no_new_privs");
    bits |= VSGX_ISOLATED_NO_NEW_PRIVS;
    return bits;
}

/* The page pool becomes fd 0; every other descriptor is closed. */
static void close_descriptors(uint64_t pool_fd)
{
    if (pool_fd != 0) {
        if (SYSCALL(SYS_dup3, pool_fd, 0, 0, 0, 0, 0) != 0)
            die("cannot move the page pool to fd 0");
    }
    if (SYSCALL(SYS_close_range, 1, ~0u, 0, 0, 0, 0) != 0) {
        for (long fd = 1; fd < 4096; fd++)
            SYSCALL(SYS_close, fd, 0, 0, 0, 0, 0);
    }
}

static void limit(int resource, uint64_t value)
{
    uint64_t lim[2] = {value, value};
    if (SYSCALL(SYS_setrlimit, resource, lim, 0, 0, 0, 0) != 0)
        die("setrlimit failed");
}

#define RLIMIT_FSIZE 1
#define RLIMIT_DATA 2
#define RLIMIT_CORE 4
#define RLIMIT_NPROC 6
#define RLIMIT_NOFILE 7
#define RLIMIT_MEMLOCK 8
#define RLIMIT_AS 9
#define RLIMIT_MSGQUEUE 12

static struct sock_filter filter_code[FILTER_MAX];
static struct sock_fprog filter_prog;

__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "    xor %rbp, %rbp\n"
        "    mov %rsp, %rdi\n"
        "    lea vsgx_setup_stack+65536(%rip), %rsp\n"
        "    call runner_main\n"
        "    hlt\n");

/* argv: REPORT_FD COMMAND_FD CLIENT_FD STATE_FD ENCLAVE_FD POOL_FD BASE SIZE POOL_SIZE FLAGS
   ROOT */
void runner_main(uint64_t *sp)
{
    long argc = (long)sp[0];
    char **argv = (char **)(sp + 1);
    uint64_t arg[10];
    if (argc != 12)
        SYSCALL(SYS_exit_group, 98, 0, 0, 0, 0, 0);
    for (int i = 0; i < 10; i++)
        if (parse(argv[i + 1], &arg[i]) != 0)
            SYSCALL(SYS_exit_group, 98, 0, 0, 0, 0, 0);
    uint64_t report_fd = arg[0], command_fd = arg[1], client_fd = arg[2], state_fd = arg[3];
    uint64_t enclave_fd = arg[4], pool_fd = arg[5];
    uint64_t base = arg[6], size = arg[7], pool_size = arg[8], flags = arg[9];
    const char *root = argv[11];
    if (SYSCALL(SYS_mmap, &vsgx_report, sizeof(vsgx_report), PROT_RW, MAP_SHARED | MAP_FIXED,
                report_fd, 0) != (long)&vsgx_report)
        SYSCALL(SYS_exit_group, 97, 0, 0, 0, 0, 0);
    if (SYSCALL(SYS_mmap, &vsgx_command, sizeof(vsgx_command), PROT_READ,
                MAP_SHARED | MAP_FIXED, command_fd, 0) != (long)&vsgx_command)
        die("cannot map the command area");
    if (SYSCALL(SYS_mmap, &vsgx_client, sizeof(vsgx_client), PROT_RW, MAP_SHARED | MAP_FIXED,
                client_fd, 0) != (long)&vsgx_client)
        die("cannot map the client area");
    if (SYSCALL(SYS_mmap, &vsgx_state, sizeof(vsgx_state), PROT_READ, MAP_SHARED | MAP_FIXED,
                state_fd, 0) != (long)&vsgx_state)
        die("cannot map the enclave's state page");
    /* Set-up and the first wait for a command run as a handler does: with
       the interrupts and the marker blocked, until vsgx_enter unmasks. */
    uint64_t blocked = HANDLER_MASK;
    SYSCALL(SYS_rt_sigprocmask, 2, &blocked, 0, 8, 0, 0);

    char **envp = argv + argc + 1;
    while (*envp)
        envp++;
    for (uint64_t *aux = (uint64_t *)(envp + 1); aux[0] != AT_NULL; aux += 2)
        if (aux[0] == AT_HWCAP2 && (aux[1] & HWCAP2_FSGSBASE))
            sealed.fsgsbase = 1;

    if (flags & VSGX_RUNNER_FLAG_NO_FSGSBASE)
        sealed.fsgsbase = 0;
    {
        uint32_t eax = 7, ebx, ecx = 0, edx;
        __asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
        sealed.rdpid = (ecx >> 22) & 1;
    }
    if ((base | size) & 4095 || size == 0 || base + size < base || base + size > (1ull << 47))
        die("bad enclave range");
    sealed.enclave_begin = base;
    sealed.enclave_end = base + size;
    /* The enclave's range: its memory at its own addresses, inaccessible
       until the EVM says otherwise. */
    if (SYSCALL(SYS_mmap, base, size, PROT_NONE, MAP_SHARED | MAP_FIXED_NOREPLACE, enclave_fd,
                0) != (long)base)
        die("cannot map the enclave at its base address");

    set_action(SIGUSR2, (void *)on_startup, SA_SIGINFO, (void *)vsgx_setup_restorer);
    SYSCALL(SYS_tgkill, SYSCALL(SYS_getpid, 0, 0, 0, 0, 0, 0),
            SYSCALL(SYS_gettid, 0, 0, 0, 0, 0, 0), SIGUSR2, 0, 0, 0);
    if (!startup_seen)
        die("the start-up signal did not arrive");
    sealed.xsave = startup_xsave;
    sealed.xfeatures = startup_xfeatures;
    set_action(SIGUSR2, SIG_IGN, 0, (void *)vsgx_no_return);

    uint8_t fx[512] __attribute__((aligned(16)));
    __asm__ volatile("fxsave64 %0" : "=m"(fx));
    uint32_t mxcsr_mask = *(uint32_t *)(fx + 28);
    vsgx_report.mxcsr_mask = mxcsr_mask ? mxcsr_mask : 0xFFBF;

    uint32_t features = (sealed.fsgsbase ? VSGX_FEATURE_FSGSBASE : 0) |
                        (sealed.xsave ? VSGX_FEATURE_XSAVE : 0);
    if (SYSCALL(SYS_arch_prctl, ARCH_SET_CPUID, 0, 0, 0, 0, 0) == 0)
        features |= VSGX_FEATURE_CPUID_FAULTING;
    if ((flags & VSGX_RUNNER_FLAG_RDTSC_FAULTS) &&
        SYSCALL(SYS_prctl, PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0, 0) == 0)
        features |= VSGX_FEATURE_RDTSC_FAULTS;

    find_foreign_mappings();
    if ((flags & VSGX_RUNNER_FLAG_EXIT_GATE) && map_exit_gate(base))
        features |= VSGX_FEATURE_EXIT_GATE;
    vsgx_report.features = features;
    uint32_t isolation = isolate(root);
    close_descriptors(pool_fd);
    sealed.pool_fd = 0;
    limit(RLIMIT_NOFILE, 1);
    limit(RLIMIT_NPROC, 0);
    limit(RLIMIT_FSIZE, 0);
    limit(RLIMIT_CORE, 0);
    limit(RLIMIT_MEMLOCK, 0);
    limit(RLIMIT_MSGQUEUE, 0);
    limit(RLIMIT_DATA, 32ull << 20);
    limit(RLIMIT_AS, size + (uint64_t)(vsgx_image_end - vsgx_image_begin) + pool_size +
                         (64ull << 20));
    isolation |= VSGX_ISOLATED_RLIMITS | VSGX_ISOLATED_NO_FILE_DESCRIPTOR_BUT_ITS_PAGE_POOL |
                 VSGX_ISOLATED_RUNNER_CODE_SEALED;

    struct {
        void *sp;
        int flags;
        size_t size;
    } ss = {vsgx_alt_stack, 0, ALT_STACK_SIZE};
    if (SYSCALL(SYS_sigaltstack, &ss, 0, 0, 0, 0, 0) < 0)
        die("sigaltstack failed");
    static const int faults[] = {SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSYS};
    for (unsigned i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
        set_action(faults[i], vsgx_handler, SA_SIGINFO | SA_ONSTACK | SA_NODEFER,
                   vsgx_no_return);
    set_action(SIGUSR1, vsgx_handler, SA_SIGINFO | SA_ONSTACK, vsgx_no_return);
    set_action(SIGALRM, vsgx_handler, SA_SIGINFO | SA_ONSTACK, vsgx_no_return);
    set_action(SIG_MARKER, SIG_IGN, 0, vsgx_no_return);
    long every_second[4] = {1, 0, 1, 0}; /* struct itimerval */
    if (SYSCALL(SYS_setitimer, 0, every_second, 0, 0, 0, 0) < 0)
        die("setitimer failed");

    sealed.empty_mask = 0;
    sealed.second[0] = 1;
    sealed.second[1] = 0;
    sealed.parent = SYSCALL(SYS_getppid, 0, 0, 0, 0, 0, 0);
    struct filter_params params = {
        .ip_begin = (uint64_t)vsgx_entry_begin,
        .ip_end = (uint64_t)vsgx_entry_end,
        .enclave_begin = sealed.enclave_begin,
        .enclave_end = sealed.enclave_end,
        .image_begin = (uint64_t)vsgx_image_begin,
        .image_end = (uint64_t)vsgx_image_end,
        .wait_word = (uint64_t)&vsgx_client.doorbell,
        .report_word = (uint64_t)&vsgx_report.seq,
        .reply_word = (uint64_t)&vsgx_client.reply_seq,
        .futex_timeout = (uint64_t)sealed.second,
        .mask_slot = (uint64_t)&vsgx_scratch.mask,
        .empty_mask = (uint64_t)&sealed.empty_mask,
        .base_slot = (uint64_t)&vsgx_scratch.base,
        .pool_fd = 0,
        .pool_size = pool_size,
        .fsgsbase = (int)sealed.fsgsbase,
    };
    int count = build_filter(&params, filter_code);
    if (count < 0)
        die("cannot build the seccomp filter");
    filter_prog.len = (uint16_t)count;
    filter_prog.filter = filter_code;
    vsgx_report.isolation = isolation;
    vsgx_scratch.last_cmd = vsgx_command.seq;
    vsgx_fast.last_req = vsgx_client.request_seq;
    vsgx_fast.grant_seq = ~0u;
    vsgx_fast.spin_limit = SPIN_MIN;
    const char *failed = "cannot seal the runner or install the seccomp filter";
    for (size_t n = 0; (vsgx_report.message[n] = (uint8_t)failed[n]) != 0; n++)
        ;
    vsgx_finish(&filter_prog);
}
