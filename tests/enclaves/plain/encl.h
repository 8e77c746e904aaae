/* Operations of the plain test enclave. RDI points at a struct in untrusted
   memory whose first u64 is the operation; RDI == 0 is the register ABI. */
#ifndef ENCL_H
#define ENCL_H
#ifndef ENCL_TCS_COUNT
#define ENCL_TCS_COUNT 4
#endif
#define ENCL_NSSA 2
#define ENCL_STACK_PAGES 4

#ifndef __ASSEMBLER__
#include <stdint.h>

enum encl_op {
    OP_NOP = 0,
    OP_PUT_BUFFER = 1,      /* value@8 -> encl_buffer[0..8] */
    OP_GET_BUFFER = 2,      /* value@8 <- encl_buffer[0..8] */
    OP_PUT_ADDRESS = 3,     /* *(u64 *)addr@16 = value@8 */
    OP_GET_ADDRESS = 4,     /* value@8 = *(u64 *)addr@16 */
    OP_EACCEPT = 5,         /* addr@8 flags@16 -> ret@24 */
    OP_EMODPE = 6,          /* addr@8 flags@16 */
    OP_INIT_TCS_PAGE = 7,   /* tcs@8 ssa@16 entry@24 (offsets for ssa/entry) */
    OP_DIVIDE = 8,          /* dividend@8 divisor@16 -> quotient@24 */
    OP_READ_VIA_RAX = 9,    /* addr@8 -> value@16 (mov (%rax),%rax) */
    OP_EGETKEY = 10,        /* keyrequest@64(512) -> ret@8 key@16 */
    OP_EREPORT = 11,        /* targetinfo@64(512) reportdata@576(64) -> report@640(432) */
    OP_VERIFY_REPORT = 12,  /* report@64(432) -> ret@8 (0 ok, 1 MAC mismatch, else SGX error) */
    OP_SYSCALL = 13,
    OP_CPUID = 14,
    OP_SHA256 = 15,         /* offset@8 length@16 rounds@24 -> digest@32(32) */
    OP_WAIT_FLAG = 16,      /* value@8 limit@16 -> ret@24 (1 seen, 0 timeout) */
    OP_SET_FLAG = 17,       /* value@8 */
    OP_HANDLE_EXCEPTION = 18, /* action@8 value@16 -> exitinfo@24 maddr@32 errcd@40 rip@48 */
    OP_COPY = 19,           /* src@8 dst@16 length@24 */
    OP_EACCEPTCOPY = 20,    /* addr@8 flags@16 src@24 -> ret@32 */
    OP_INT3 = 21,
    OP_RECURSE = 22,        /* depth@8: overflow the stack */
    OP_BAD_JUMP = 23,       /* addr@8: jump there */
    OP_MAKE_SECRET = 24,    /* a 32-byte secret from RDRAND, kept in enclave memory */
    OP_SECRET_HASH = 25,    /* -> sha256(secret)@8(32) */
    OP_TOUCH = 26,          /* addr@8 pages@16 -> sum@24 of one word per page */
    OP_RDTSC = 27,          /* -> tsc@8 (#UD in SGX1 enclaves) */
    OP_JUMP = 28,           /* target@8, then rax rdi rsi rdx r10 r8 r9 rsp(0: keep) @16..72:
                               load them and jump (encl_jump_landing resumes after) */
    OP_SYSCALL_ABI = 29,    /* abi@8 (0 syscall, 1 int $0x80, 2 sysenter) rax@16 -> rax@24 */
    OP_MAX
};

/* SGX structures this enclave reads and writes (SDM "Thread Control
   Structure (TCS)", "State Save Area (SSA) Frame"); tests/test_c_layouts.py
   checks them against vsgx.arch's tables. */
struct encl_tcs {
    uint64_t state;
    uint64_t flags;
    uint64_t ossa;
    uint32_t cssa;
    uint32_t nssa;
    uint64_t oentry;
    uint64_t aep;
    uint64_t ofsbase;
    uint64_t ogsbase;
    uint32_t fslimit;
    uint32_t gslimit;
    uint8_t reserved[4024];
};

struct gprsgx {
    uint64_t rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rflags, rip, ursp, urbp;
    uint32_t exitinfo;
    uint8_t reserved[3];
    uint8_t aexnotify;
    uint64_t fsbase, gsbase;
};

struct exinfo {
    uint64_t maddr;
    uint32_t errcd;
    uint32_t reserved;
};

enum exception_action {
    FIX_NONE = 0,
    FIX_SET_RAX = 1,        /* SSA.RAX = value */
    FIX_SET_RCX = 2,        /* SSA.RCX = value */
    FIX_SKIP = 3,           /* SSA.RIP += value */
    FIX_EMODPE = 4,         /* EMODPE(SSA EXINFO page, value as SECINFO flags) */
    FIX_SET_RIP = 5,        /* SSA.RIP = value */
};

#endif /* __ASSEMBLER__ */
#endif
