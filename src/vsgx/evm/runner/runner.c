/* vsgx native runner: executes one enclave thread's code on the real CPU.

   The EVM starts one runner per TCS. The enclave's memory (a memfd of the
   EVM) is mapped MAP_SHARED at the enclave's own linear addresses with the
   protections the EVM sends (EPCM and page tables); untrusted pages the
   enclave touches are mapped from a second memfd, the page pool, after the
   EVM fetched them from the application.

   Control is a shared page (a third memfd) with two futex sequence words.
   Everything after start-up happens inside one signal handler: the runner
   "enters" the enclave by returning from the handler with the enclave's
   registers in the ucontext (the kernel's sigreturn loads them all at
   once, RSP and RFLAGS included, without touching the enclave's stack),
   and it leaves the enclave when a signal arrives: SIGILL for ENCLU and
   other #UD, SIGSEGV/SIGBUS/SIGFPE/SIGTRAP for faults, SIGSYS for a system
   call the seccomp filter refused, SIGUSR1 for the EVM's interrupts.

   Freestanding: no libc, no TLS, no stack protector — handlers run with
   the enclave's FS and GS bases. Every system call goes through the stubs
   between vsgx_sys_begin and vsgx_sys_end, and the seccomp filter allows
   system calls from there only. */
#include <stddef.h>
#include <stdint.h>

/* -- the shared control page (mirrored in native_executor.py) ---------- */
#define REG_COUNT 20
#define MAX_OPS 1000

enum { CMD_NONE, CMD_RUN, CMD_CONTINUE, CMD_OPS, CMD_QUIT };
enum { STOP_NONE, STOP_READY, STOP_ENCLU, STOP_EXCEPTION, STOP_STOPPED, STOP_OPS_DONE,
       STOP_ERROR };
enum { OP_PROTECT = 1, OP_MAP = 2, OP_UNMAP = 3 };

struct op {
    uint64_t kind, address, length, arg;
};

struct control {
    volatile uint32_t cmd_seq;   /* 0: bumped by the EVM for each command */
    volatile uint32_t done_seq;  /* 4: bumped by the runner when it stops */
    uint32_t command;            /* 8 */
    uint32_t stop;               /* 12 */
    uint64_t regs[REG_COUNT];    /* 16: GPRSGX order, then FSBASE, GSBASE */
    uint64_t vector;             /* 176 */
    uint64_t error_code;         /* 184 */
    uint64_t address;            /* 192 */
    uint64_t exit_type;          /* 200: 3 hardware, 6 software (EXITINFO.TYPE) */
    uint32_t load_fpu;           /* 208 */
    volatile uint32_t in_enclave;/* 212 */
    uint32_t nops;               /* 216 */
    uint32_t features;           /* 220: bit 0 FSGSBASE, 1 CPUID faulting, 2 RDTSC faults */
    uint64_t trapno;             /* 224 */
    uint64_t pad[3];             /* 232 */
    uint8_t fpu[512];            /* 256: FXSAVE image (x87 and SSE) */
    struct op ops[MAX_OPS];      /* 768 */
};

enum { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15, RFLAGS,
       RIP, FSBASE, GSBASE };

/* -- Linux x86-64 ABI ----------------------------------------------------- */
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_munmap 11
#define SYS_rt_sigaction 13
#define SYS_rt_sigreturn 15
#define SYS_sigaltstack 131
#define SYS_prctl 157
#define SYS_arch_prctl 158
#define SYS_gettid 186
#define SYS_futex 202
#define SYS_exit_group 231
#define SYS_tgkill 234
#define SYS_getpid 39
#define SYS_getppid 110
#define SYS_setitimer 38
#define SYS_write 1
#define SYS_seccomp 317

#define PROT_NONE 0
#define MAP_SHARED 0x01
#define MAP_FIXED 0x10
#define MAP_PRIVATE 0x02
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003
#define ARCH_GET_GS 0x1004
#define ARCH_SET_CPUID 0x1012
#define PR_SET_NO_NEW_PRIVS 38
#define PR_SET_TSC 26
#define PR_TSC_SIGSEGV 2
#define SECCOMP_SET_MODE_FILTER 1

#define SIGILL 4
#define SIGTRAP 5
#define SIGBUS 7
#define SIGFPE 8
#define SIGKILL 9
#define SIGUSR1 10
#define SIGSEGV 11
#define SIGUSR2 12
#define SIGALRM 14
#define SIGSYS 31
#define SA_SIGINFO 0x4
#define SA_ONSTACK 0x08000000
#define SA_RESTORER 0x04000000
#define SA_NODEFER 0x40000000

#define AT_NULL 0
#define AT_HWCAP2 26
#define HWCAP2_FSGSBASE 2

struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

struct stack {
    void *sp;
    int flags;
    size_t size;
};

/* ucontext: uc_flags 0, uc_link 8, uc_stack 16, uc_mcontext 40 (struct
   sigcontext: r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags,
   cs/gs/fs/ss, err, trapno, oldmask, cr2, fpstate), uc_sigmask 296. */
#define MC(uc, i) (((uint64_t *)((uint8_t *)(uc) + 40))[i])
enum { MC_R8, MC_R9, MC_R10, MC_R11, MC_R12, MC_R13, MC_R14, MC_R15, MC_RDI, MC_RSI, MC_RBP,
       MC_RBX, MC_RDX, MC_RAX, MC_RCX, MC_RSP, MC_RIP, MC_EFL, MC_CSGSFS, MC_ERR, MC_TRAPNO,
       MC_OLDMASK, MC_CR2, MC_FPSTATE };
#define UC_SIGMASK(uc) (*(uint64_t *)((uint8_t *)(uc) + 296))

static const int gpr_to_mc[16] = {MC_RAX, MC_RCX, MC_RDX, MC_RBX, MC_RSP, MC_RBP, MC_RSI,
                                  MC_RDI, MC_R8,  MC_R9,  MC_R10, MC_R11, MC_R12, MC_R13,
                                  MC_R14, MC_R15};

/* The system call stubs: the only place system calls may come from. */
long vsgx_syscall6(long n, long a, long b, long c, long d, long e, long f);
void vsgx_restorer(void);
extern char vsgx_sys_begin[], vsgx_sys_end[];
extern char __executable_start[], _end[];
__asm__(".text\n"
        ".globl vsgx_sys_begin\n"
        "vsgx_sys_begin:\n"
        ".globl vsgx_syscall6\n"
        "vsgx_syscall6:\n"
        "    mov %rdi, %rax\n"
        "    mov %rsi, %rdi\n"
        "    mov %rdx, %rsi\n"
        "    mov %rcx, %rdx\n"
        "    mov %r8, %r10\n"
        "    mov %r9, %r8\n"
        "    mov 8(%rsp), %r9\n"
        "    syscall\n"
        "    ret\n"
        ".globl vsgx_restorer\n"
        "vsgx_restorer:\n"
        "    mov $15, %eax\n"
        "    syscall\n"
        "    hlt\n"
        ".globl vsgx_sys_end\n"
        "vsgx_sys_end:\n");

#define SYSCALL(n, a, b, c, d, e, f)                                                       \
    vsgx_syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

struct timespec {
    long sec, nsec;
};

static struct control *ctl;
static long parent;
static uint64_t enclave_base, enclave_size, pool_fd;
static int fsgsbase;
static uint32_t last_cmd;
static uint8_t alt_stack[256 * 1024] __attribute__((aligned(64)));

static void copy(void *to, const void *from, size_t n)
{
    uint8_t *t = to;
    const uint8_t *f = from;
    while (n--)
        *t++ = *f++;
}

static size_t length(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static void die(const char *why)
{
    SYSCALL(SYS_write, 2, "vsgx runner: ", 13, 0, 0, 0);
    SYSCALL(SYS_write, 2, why, length(why), 0, 0, 0);
    SYSCALL(SYS_write, 2, "\n", 1, 0, 0, 0);
    SYSCALL(SYS_exit_group, 99, 0, 0, 0, 0, 0);
    for (;;)
        ;
}

static uint64_t parse(const char *s)
{
    uint64_t v = 0;
    int base = 10;
    if (s[0] == '0' && s[1] == 'x') {
        base = 16;
        s += 2;
    }
    for (; *s; s++) {
        int d = *s >= '0' && *s <= '9' ? *s - '0'
                : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10
                : -1;
        if (d < 0 || d >= base)
            die("bad number in the arguments");
        v = v * base + (uint64_t)d;
    }
    return v;
}

/* -- FS and GS bases ---------------------------------------------------- */
static void set_bases(uint64_t fs, uint64_t gs)
{
    if (fsgsbase) {
        __asm__ volatile("wrfsbase %0" : : "r"(fs));
        __asm__ volatile("wrgsbase %0" : : "r"(gs));
    } else {
        SYSCALL(SYS_arch_prctl, ARCH_SET_FS, fs, 0, 0, 0, 0);
        SYSCALL(SYS_arch_prctl, ARCH_SET_GS, gs, 0, 0, 0, 0);
    }
}

static void get_bases(uint64_t *fs, uint64_t *gs)
{
    if (fsgsbase) {
        __asm__ volatile("rdfsbase %0" : "=r"(*fs));
        __asm__ volatile("rdgsbase %0" : "=r"(*gs));
    } else {
        SYSCALL(SYS_arch_prctl, ARCH_GET_FS, fs, 0, 0, 0, 0);
        SYSCALL(SYS_arch_prctl, ARCH_GET_GS, gs, 0, 0, 0, 0);
    }
}

/* -- talking to the EVM --------------------------------------------------- */
static void report(uint32_t stop)
{
    ctl->stop = stop;
    __atomic_add_fetch(&ctl->done_seq, 1, __ATOMIC_SEQ_CST);
    SYSCALL(SYS_futex, &ctl->done_seq, FUTEX_WAKE, 1, 0, 0, 0);
}

static uint32_t next_command(void)
{
    for (int spin = 0; spin < 4000; spin++) {
        if (__atomic_load_n(&ctl->cmd_seq, __ATOMIC_ACQUIRE) != last_cmd)
            goto got;
        __asm__ volatile("pause");
    }
    while (__atomic_load_n(&ctl->cmd_seq, __ATOMIC_ACQUIRE) == last_cmd) {
        struct timespec second = {1, 0};
        SYSCALL(SYS_futex, &ctl->cmd_seq, FUTEX_WAIT, last_cmd, &second, 0, 0);
        /* The EVM went away (we were re-parented): so do we. */
        if (SYSCALL(SYS_getppid, 0, 0, 0, 0, 0, 0) != parent)
            SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
    }
got:
    last_cmd = ctl->cmd_seq;
    return ctl->command;
}

static long apply_ops(void)
{
    for (uint32_t i = 0; i < ctl->nops && i < MAX_OPS; i++) {
        struct op *op = &ctl->ops[i];
        long r = 0;
        if (op->kind == OP_PROTECT) {
            if (op->address < enclave_base || op->length > enclave_size ||
                op->address - enclave_base > enclave_size - op->length)
                r = -22;
            else
                r = SYSCALL(SYS_mprotect, op->address, op->length, op->arg & 7, 0, 0, 0);
        } else if (op->kind == OP_MAP) {
            /* An untrusted page from the pool (arg: slot << 1 | writable):
               never over the enclave or the runner itself. */
            long prot = 1 | ((op->arg & 1) ? 2 : 0);
            uint64_t a = op->address;
            if ((a & 4095) || a < 0x10000 || (a + 4096 > enclave_base &&
                                                a < enclave_base + enclave_size) ||
                (a + 4096 > (uint64_t)__executable_start && a < (uint64_t)_end))
                r = -22;
            else
                r = SYSCALL(SYS_mmap, a, 4096, prot, MAP_SHARED | MAP_FIXED_NOREPLACE,
                            pool_fd, (op->arg >> 1) * 4096);
            if (r == (long)a)
                r = 0;
            else if (r >= 0) {
                SYSCALL(SYS_munmap, r, 4096, 0, 0, 0, 0);
                r = -17;
            }
        } else if (op->kind == OP_UNMAP) {
            uint64_t a = op->address;
            if ((a + op->length > enclave_base && a < enclave_base + enclave_size) ||
                (a + op->length > (uint64_t)__executable_start && a < (uint64_t)_end))
                r = -22;
            else
                r = SYSCALL(SYS_munmap, a, op->length, 0, 0, 0, 0);
        } else {
            r = -22;
        }
        if (r < 0) {
            ctl->address = op->address;
            ctl->error_code = (uint64_t)-r;
            ctl->nops = 0;
            return r;
        }
    }
    ctl->nops = 0;
    return 0;
}

static void save_state(void *uc)
{
    for (int i = 0; i < 16; i++)
        ctl->regs[i] = MC(uc, gpr_to_mc[i]);
    ctl->regs[RFLAGS] = MC(uc, MC_EFL);
    ctl->regs[RIP] = MC(uc, MC_RIP);
    get_bases(&ctl->regs[FSBASE], &ctl->regs[GSBASE]);
    uint8_t *fp = (uint8_t *)MC(uc, MC_FPSTATE);
    if (fp)
        copy(ctl->fpu, fp, 512);
}

static void load_state(void *uc)
{
    for (int i = 0; i < 16; i++)
        MC(uc, gpr_to_mc[i]) = ctl->regs[i];
    MC(uc, MC_EFL) = (ctl->regs[RFLAGS] & 0xDD5) | 0x202;
    MC(uc, MC_RIP) = ctl->regs[RIP];
    uint8_t *fp = (uint8_t *)MC(uc, MC_FPSTATE);
    if (ctl->load_fpu && fp) {
        uint32_t mask = *(uint32_t *)(fp + 28);
        copy(fp, ctl->fpu, 416); /* not 464..511: the kernel's XSAVE frame info */
        *(uint32_t *)(fp + 24) &= mask ? mask : 0xFFBF; /* MXCSR reserved bits */
        *(uint32_t *)(fp + 28) = mask;
        /* The kernel's XSAVE frame: keep the magic in the software area and
           mark only x87 and SSE state present (the rest initialised). */
        if (*(uint32_t *)(fp + 464) == 0x46505853u)
            *(uint64_t *)(fp + 512) = 3;
        ctl->load_fpu = 0;
    }
    set_bases(ctl->regs[FSBASE], ctl->regs[GSBASE]);
}

/* Serve commands until one sends us (back) into the enclave. */
static void serve(void *uc)
{
    for (;;) {
        uint32_t cmd = next_command();
        if (cmd == CMD_QUIT)
            SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
        if (apply_ops() < 0) {
            report(STOP_ERROR);
            continue;
        }
        if (cmd == CMD_OPS) {
            report(STOP_OPS_DONE);
            continue;
        }
        if (cmd == CMD_RUN || cmd == CMD_CONTINUE) {
            if (!uc)
                die("no context to run");
            if (cmd == CMD_RUN)
                load_state(uc);
            UC_SIGMASK(uc) = 0; /* interrupts may stop the enclave again */
            ctl->in_enclave = 1;
            return;
        }
        report(STOP_ERROR);
    }
}

static int is_opcode(uint64_t rip, const uint8_t *bytes, int n)
{
    const uint8_t *p = (const uint8_t *)rip;
    for (int i = 0; i < n; i++)
        if (p[i] != bytes[i])
            return 0;
    return 1;
}

static const uint8_t enclu[3] = {0x0f, 0x01, 0xd7};
static const uint8_t rdtsc[2] = {0x0f, 0x31};
static const uint8_t rdtscp[3] = {0x0f, 0x01, 0xf9};
static const uint8_t cpuid[2] = {0x0f, 0xa2};

static void on_signal(int sig, void *info, void *uc)
{
    if (sig == SIGUSR2 && !ctl->in_enclave) { /* start-up: begin serving */
        report(STOP_READY);
        serve(uc);
        return;
    }
    if (!ctl->in_enclave) {
        if (sig == SIGUSR1)
            return; /* an interrupt that came after the enclave stopped */
        die("fault outside enclave code");
    }
    ctl->in_enclave = 0;
    save_state(uc);
    uint64_t rip = MC(uc, MC_RIP);
    uint64_t trapno = MC(uc, MC_TRAPNO);
    ctl->trapno = trapno;
    ctl->error_code = 0;
    ctl->address = 0;
    ctl->exit_type = 3;
    uint32_t stop = STOP_EXCEPTION;
    switch (sig) {
    case SIGUSR1:
        stop = STOP_STOPPED;
        break;
    case SIGILL:
        if (rip >= enclave_base && rip - enclave_base < enclave_size - 2 &&
            is_opcode(rip, enclu, 3))
            stop = STOP_ENCLU;
        ctl->vector = 6;
        break;
    case SIGSYS: /* a system call refused by seccomp: SYSCALL is #UD in an enclave */
        ctl->vector = 6;
        ctl->regs[RIP] = rip - 2;
        break;
    case SIGSEGV:
    case SIGBUS:
        ctl->vector = trapno ? trapno : 14;
        ctl->error_code = MC(uc, MC_ERR);
        ctl->address = *(uint64_t *)((uint8_t *)info + 16);
        if (trapno == 13 && (is_opcode(rip, rdtsc, 2) || is_opcode(rip, rdtscp, 3) ||
                             is_opcode(rip, cpuid, 2))) {
            ctl->vector = 6; /* RDTSC (SGX1) and CPUID are #UD in an enclave */
            ctl->error_code = 0;
            ctl->address = 0;
        }
        break;
    case SIGFPE:
        ctl->vector = trapno;
        break;
    case SIGTRAP:
        ctl->vector = trapno;
        if (trapno == 3)
            ctl->exit_type = 6; /* INT3: a software exception, RIP after it */
        break;
    default:
        ctl->vector = trapno;
    }
    report(stop);
    serve(uc);
}

__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "    xor %rbp, %rbp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call runner_main\n"
        "    hlt\n");

/* Once a second: if the EVM is gone (we were re-parented), so are we, even
   while enclave code spins. Otherwise the enclave just goes on. */
static void on_alarm(int sig, void *info, void *uc)
{
    (void)sig;
    (void)info;
    (void)uc;
    if (SYSCALL(SYS_getppid, 0, 0, 0, 0, 0, 0) != parent)
        SYSCALL(SYS_exit_group, 0, 0, 0, 0, 0, 0);
}

static void install(int sig, int extra_flags)
{
    struct kernel_sigaction act = {0};
    act.handler = sig == SIGALRM ? (void *)on_alarm : (void *)on_signal;
    act.flags = SA_SIGINFO | SA_ONSTACK | SA_RESTORER | extra_flags;
    act.restorer = (void *)vsgx_restorer;
    act.mask = 1ull << (SIGUSR1 - 1); /* no interrupt while the runner's code runs */
    if (SYSCALL(SYS_rt_sigaction, sig, &act, 0, 8, 0, 0) < 0)
        die("rt_sigaction failed");
}

struct sock_filter {
    uint16_t code;
    uint8_t jt, jf;
    uint32_t k;
};

struct sock_fprog {
    uint16_t len;
    struct sock_filter *filter;
};

#define BPF_LD_W_ABS 0x20
#define BPF_JEQ_K 0x15
#define BPF_JGE_K 0x35
#define BPF_JGT_K 0x25
#define BPF_RET_K 0x06
#define SECCOMP_RET_ALLOW 0x7fff0000u
#define SECCOMP_RET_TRAP 0x00030000u
#define SECCOMP_RET_KILL_PROCESS 0x80000000u
#define AUDIT_ARCH_X86_64 0xC000003Eu

/* System calls only from our stubs (seccomp_data.instruction_pointer is
   the address after the SYSCALL instruction); anything else traps. */
static void seccomp(void)
{
    uint64_t begin = (uint64_t)vsgx_sys_begin, end = (uint64_t)vsgx_sys_end;
    if (begin >> 32 != end >> 32)
        die("the system call stubs straddle a 4 GiB boundary");
    struct sock_filter filter[] = {
        {BPF_LD_W_ABS, 0, 0, 4},
        {BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64},
        {BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS},
        {BPF_LD_W_ABS, 0, 0, 12},
        {BPF_JEQ_K, 0, 4, (uint32_t)(begin >> 32)},
        {BPF_LD_W_ABS, 0, 0, 8},
        {BPF_JGT_K, 0, 2, (uint32_t)begin},
        {BPF_JGT_K, 1, 0, (uint32_t)end},
        {BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW},
        {BPF_RET_K, 0, 0, SECCOMP_RET_TRAP},
    };
    struct sock_fprog prog = {sizeof(filter) / sizeof(filter[0]), filter};
    if (SYSCALL(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0) < 0 ||
        SYSCALL(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog, 0, 0, 0) < 0)
        die("cannot install the seccomp filter");
}

/* argv: control_fd enclave_fd base size pool_fd rdtsc_faults */
void runner_main(uint64_t *sp)
{
    long argc = (long)sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 7)
        die("usage: runner CONTROL_FD ENCLAVE_FD BASE SIZE POOL_FD RDTSC_FAULTS");
    char **envp = argv + argc + 1;
    while (*envp)
        envp++;
    for (uint64_t *aux = (uint64_t *)(envp + 1); aux[0] != AT_NULL; aux += 2)
        if (aux[0] == AT_HWCAP2 && (aux[1] & HWCAP2_FSGSBASE))
            fsgsbase = 1;
    uint64_t control_fd = parse(argv[1]), enclave_fd = parse(argv[2]);
    enclave_base = parse(argv[3]);
    enclave_size = parse(argv[4]);
    pool_fd = parse(argv[5]);
    long mapped = SYSCALL(SYS_mmap, 0, sizeof(struct control), 3, MAP_SHARED, control_fd, 0);
    if (mapped < 0)
        die("cannot map the control page");
    ctl = (struct control *)mapped;
    /* The enclave's range: its memory at its own addresses, inaccessible
       until the EVM says otherwise. */
    mapped = SYSCALL(SYS_mmap, enclave_base, enclave_size, PROT_NONE,
                     MAP_SHARED | MAP_FIXED_NOREPLACE, enclave_fd, 0);
    if (mapped != (long)enclave_base)
        die("cannot map the enclave at its base address");
    parent = SYSCALL(SYS_getppid, 0, 0, 0, 0, 0, 0);
    uint32_t features = fsgsbase ? 1 : 0;
    if (SYSCALL(SYS_arch_prctl, ARCH_SET_CPUID, 0, 0, 0, 0, 0) == 0)
        features |= 2;
    if (parse(argv[6]) && SYSCALL(SYS_prctl, PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0, 0) == 0)
        features |= 4;
    ctl->features = features;
    struct stack ss = {alt_stack, 0, sizeof(alt_stack)};
    if (SYSCALL(SYS_sigaltstack, &ss, 0, 0, 0, 0, 0) < 0)
        die("sigaltstack failed");
    install(SIGILL, SA_NODEFER);
    install(SIGSEGV, SA_NODEFER);
    install(SIGBUS, SA_NODEFER);
    install(SIGFPE, SA_NODEFER);
    install(SIGTRAP, SA_NODEFER);
    install(SIGSYS, SA_NODEFER);
    install(SIGUSR1, 0);
    install(SIGUSR2, 0);
    install(SIGALRM, 0);
    long every_second[4] = {1, 0, 1, 0}; /* struct itimerval */
    if (SYSCALL(SYS_setitimer, 0, every_second, 0, 0, 0, 0) < 0)
        die("setitimer failed");
    seccomp();
    last_cmd = ctl->cmd_seq;
    long pid = SYSCALL(SYS_getpid, 0, 0, 0, 0, 0, 0);
    long tid = SYSCALL(SYS_gettid, 0, 0, 0, 0, 0, 0);
    SYSCALL(SYS_tgkill, pid, tid, SIGUSR2, 0, 0, 0);
    die("the start-up signal returned");
}
