/* The runner's seccomp filter: system calls by number AND arguments, and
   only from the runner's entry section. Included by runner.c, and by the
   test that runs the filter against boundary cases in the real kernel.

   Classic BPF sees each 64-bit argument as two 32-bit words and has
   32-bit arithmetic only, so every 64-bit comparison below is done on the
   high word first, then the low word; the one sum (mprotect's end) is
   added with a carry. Everything not allowed returns SECCOMP_RET_TRAP:
   SIGSYS, which the runner turns into #UD — also for another ABI
   (int $0x80, sysenter) and for x32 numbers. */
#include <stdint.h>

struct sock_filter {
    uint16_t code;
    uint8_t jt, jf;
    uint32_t k;
};

struct sock_fprog {
    uint16_t len;
    struct sock_filter *filter;
};

struct filter_params {
    uint64_t ip_begin, ip_end;         /* system calls only from (ip_begin, ip_end] */
    uint64_t enclave_begin, enclave_end;
    uint64_t image_begin, image_end;   /* the runner's own memory: never unmapped */
    uint64_t wait_word;                /* the one word FUTEX_WAIT may wait on */
    uint64_t report_word, reply_word;  /* the words FUTEX_WAKE may wake */
    uint64_t futex_timeout;            /* the one timeout FUTEX_WAIT may use */
    uint64_t mask_slot;                /* where a signal-mask query may write */
    uint64_t empty_mask;               /* the one mask that may be set */
    uint64_t base_slot;                /* where ARCH_GET_FS/GS may write */
    uint64_t pool_fd, pool_size;
    int fsgsbase;                      /* 1: no arch_prctl at all */
};

#define FILTER_MAX 256

/* classic BPF opcodes */
#define LD_ABS 0x20    /* A = data[k] (32 bits) */
#define LD_MEM 0x60    /* A = M[k] */
#define ST_MEM 0x02    /* M[k] = A */
#define ADD_K 0x04     /* A += k */
#define ADD_X 0x0c     /* A += X */
#define TAX 0x07
#define JA 0x05
#define JEQ_K 0x15
#define JGT_K 0x25
#define JGE_K 0x35
#define JSET_K 0x45
#define JGE_X 0x3d
#define RET_K 0x06

#define RET_ALLOW 0x7fff0000u
#define RET_TRAP 0x00030000u
#define AUDIT_ARCH_X86_64 0xC000003Eu
#define X32_SYSCALL_BIT 0x40000000u

/* seccomp_data */
#define D_NR 0
#define D_ARCH 4
#define D_IP 8
#define D_ARG(i) (16 + 8 * (i))
#define LO(off) (off)
#define HI(off) ((off) + 4)

/* The filter is written with labels; jumps are resolved at the end. */
enum label {
    L_NEXT, L_ALLOW, L_TRAP,
    L_FUTEX, L_FUTEX_WAKE, L_MPROTECT, L_MPROTECT_SUM, L_MPROTECT_HI, L_MMAP, L_MMAP_PROT,
    L_MUNMAP, L_MUNMAP_IMAGE, L_SIGMASK, L_SIGMASK_SET, L_ARCH, L_ARCH_GET,
    L_FIXED
};
#define LABEL_MAX 128

struct builder {
    struct sock_filter *code;
    unsigned n, nfix;
    int bad, labels;
    int at[LABEL_MAX];
    struct { unsigned insn; int label; int which; } fix[FILTER_MAX * 2];
};

static void note_jump(struct builder *b, int label, int which)
{
    if (label == L_NEXT)
        return;
    if (b->nfix >= FILTER_MAX * 2) {
        b->bad = 1;
        return;
    }
    b->fix[b->nfix].insn = b->n;
    b->fix[b->nfix].label = label;
    b->fix[b->nfix].which = which;
    b->nfix++;
}

/* One instruction; jt and jf name labels (L_NEXT: the next instruction). */
static void emit(struct builder *b, uint16_t code, int jt, int jf, uint32_t k)
{
    if (b->n >= FILTER_MAX) {
        b->bad = 1;
        return;
    }
    note_jump(b, jt, 0);
    note_jump(b, jf, 1);
    struct sock_filter *f = &b->code[b->n++];
    f->code = code;
    f->jt = f->jf = 0;
    f->k = k;
}

static void jump(struct builder *b, int label)
{
    note_jump(b, label, 2); /* JA takes its offset in k */
    emit(b, JA, L_NEXT, L_NEXT, 0);
}

static void place(struct builder *b, int label)
{
    b->at[label] = (int)b->n;
}

static int fresh(struct builder *b)
{
    if (b->labels >= LABEL_MAX) {
        b->bad = 1;
        return L_TRAP;
    }
    return b->labels++;
}

static int resolve(struct builder *b)
{
    for (unsigned i = 0; i < b->nfix; i++) {
        unsigned insn = b->fix[i].insn;
        int target = b->at[b->fix[i].label];
        int offset = target - (int)insn - 1;
        if (target < 0 || offset < 0 || (b->fix[i].which < 2 && offset > 255))
            return -1;
        if (b->fix[i].which == 0)
            b->code[insn].jt = (uint8_t)offset;
        else if (b->fix[i].which == 1)
            b->code[insn].jf = (uint8_t)offset;
        else
            b->code[insn].k = (uint32_t)offset;
    }
    return b->bad ? -1 : (int)b->n;
}

/* Unsigned 64-bit comparisons of the seccomp_data word at ``off`` with a
   constant, going to ``yes`` or ``no``; L_NEXT there means "after this
   comparison". */
enum { EQ, GE, LE };

static void cmp64(struct builder *b, int op, int off, uint64_t k, int yes, int no)
{
    int end = fresh(b);
    uint32_t hi = (uint32_t)(k >> 32), lo = (uint32_t)k;
    if (yes == L_NEXT)
        yes = end;
    if (no == L_NEXT)
        no = end;
    emit(b, LD_ABS, L_NEXT, L_NEXT, HI(off));
    if (op == EQ) {
        emit(b, JEQ_K, L_NEXT, no, hi);
        emit(b, LD_ABS, L_NEXT, L_NEXT, LO(off));
        emit(b, JEQ_K, yes, no, lo);
    } else if (op == GE) {
        emit(b, JGT_K, yes, L_NEXT, hi);
        emit(b, JEQ_K, L_NEXT, no, hi);
        emit(b, LD_ABS, L_NEXT, L_NEXT, LO(off));
        emit(b, JGE_K, yes, no, lo);
    } else {
        emit(b, JGT_K, no, L_NEXT, hi);
        emit(b, JEQ_K, L_NEXT, yes, hi);
        emit(b, LD_ABS, L_NEXT, L_NEXT, LO(off));
        emit(b, JGT_K, no, yes, lo);
    }
    place(b, end);
}

/* Fills ``out`` (FILTER_MAX entries); the number of instructions, or -1. */
static int build_filter(const struct filter_params *p, struct sock_filter *out)
{
    static struct builder b;
    b.code = out;
    b.n = b.nfix = 0;
    b.bad = 0;
    b.labels = L_FIXED;
    for (int i = 0; i < LABEL_MAX; i++)
        b.at[i] = -1;
    if (p->ip_begin >> 32 != p->ip_end >> 32 || p->enclave_begin >= p->enclave_end ||
        p->enclave_begin < 4096 || p->image_begin < 4096 || p->pool_size >> 32)
        return -1;

    /* The ABI, then where the call comes from. */
    emit(&b, LD_ABS, L_NEXT, L_NEXT, D_ARCH);
    emit(&b, JEQ_K, L_NEXT, L_TRAP, AUDIT_ARCH_X86_64);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, D_NR);
    emit(&b, JSET_K, L_TRAP, L_NEXT, X32_SYSCALL_BIT);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_IP));
    emit(&b, JEQ_K, L_NEXT, L_TRAP, (uint32_t)(p->ip_begin >> 32));
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_IP));
    emit(&b, JGT_K, L_NEXT, L_TRAP, (uint32_t)p->ip_begin);
    emit(&b, JGT_K, L_TRAP, L_NEXT, (uint32_t)p->ip_end);

    emit(&b, LD_ABS, L_NEXT, L_NEXT, D_NR);
    emit(&b, JEQ_K, L_FUTEX, L_NEXT, 202);
    emit(&b, JEQ_K, L_MPROTECT, L_NEXT, 10);
    emit(&b, JEQ_K, L_MMAP, L_NEXT, 9);
    emit(&b, JEQ_K, L_MUNMAP, L_NEXT, 11);
    emit(&b, JEQ_K, L_SIGMASK, L_NEXT, 14);
    emit(&b, JEQ_K, L_ALLOW, L_NEXT, 24);  /* sched_yield: a spinning wait lets a peer on this CPU run */
    emit(&b, JEQ_K, L_ALLOW, L_NEXT, 110); /* getppid */
    emit(&b, JEQ_K, L_ALLOW, L_NEXT, 231); /* exit_group */
    if (!p->fsgsbase)
        emit(&b, JEQ_K, L_ARCH, L_NEXT, 158);
    jump(&b, L_TRAP);

    /* futex: WAIT on the doorbell (with the one timeout), WAKE on the
       report word (the EVM) or the client's reply word. The op is an int:
       its low word is what the kernel uses. */
    place(&b, L_FUTEX);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(1)));
    emit(&b, JEQ_K, L_FUTEX_WAKE, L_NEXT, 1);
    emit(&b, JEQ_K, L_NEXT, L_TRAP, 0);
    cmp64(&b, EQ, D_ARG(0), p->wait_word, L_NEXT, L_TRAP);
    cmp64(&b, EQ, D_ARG(3), p->futex_timeout, L_ALLOW, L_TRAP);
    place(&b, L_FUTEX_WAKE);
    cmp64(&b, EQ, D_ARG(0), p->report_word, L_ALLOW, L_NEXT);
    cmp64(&b, EQ, D_ARG(0), p->reply_word, L_ALLOW, L_TRAP);

    /* mprotect(addr, len, prot): [addr, addr + len) inside ELRANGE, prot
       within RWX. addr < end and len <= size keep the sum below 2^48. */
    place(&b, L_MPROTECT);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_ARG(2)));
    emit(&b, JEQ_K, L_NEXT, L_TRAP, 0);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(2)));
    emit(&b, JSET_K, L_TRAP, L_NEXT, ~7u);
    cmp64(&b, GE, D_ARG(0), p->enclave_begin, L_NEXT, L_TRAP);
    cmp64(&b, LE, D_ARG(0), p->enclave_end - 1, L_NEXT, L_TRAP);
    cmp64(&b, LE, D_ARG(1), p->enclave_end - p->enclave_begin, L_NEXT, L_TRAP);
    /* M[0] = lo(addr) + lo(len); carry into the high word */
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(1)));
    emit(&b, TAX, L_NEXT, L_NEXT, 0);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(0)));
    emit(&b, ADD_X, L_NEXT, L_NEXT, 0);
    emit(&b, ST_MEM, L_NEXT, L_NEXT, 0);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(0)));
    emit(&b, TAX, L_NEXT, L_NEXT, 0);
    emit(&b, LD_MEM, L_NEXT, L_NEXT, 0);
    emit(&b, JGE_X, L_MPROTECT_SUM, L_NEXT, 0); /* sum >= lo(addr): no carry */
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_ARG(0)));
    emit(&b, ADD_K, L_NEXT, L_NEXT, 1);
    jump(&b, L_MPROTECT_HI);
    place(&b, L_MPROTECT_SUM);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_ARG(0)));
    place(&b, L_MPROTECT_HI);
    emit(&b, ST_MEM, L_NEXT, L_NEXT, 1);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_ARG(1)));
    emit(&b, TAX, L_NEXT, L_NEXT, 0);
    emit(&b, LD_MEM, L_NEXT, L_NEXT, 1);
    emit(&b, ADD_X, L_NEXT, L_NEXT, 0);
    /* (A:M[0]) <= enclave_end */
    emit(&b, JGT_K, L_TRAP, L_NEXT, (uint32_t)(p->enclave_end >> 32));
    emit(&b, JEQ_K, L_NEXT, L_ALLOW, (uint32_t)(p->enclave_end >> 32));
    emit(&b, LD_MEM, L_NEXT, L_NEXT, 0);
    emit(&b, JGT_K, L_TRAP, L_ALLOW, (uint32_t)p->enclave_end);

    /* mmap: one pool page, read-only or read-write, shared, never over an
       existing mapping; never executable. */
    place(&b, L_MMAP);
    cmp64(&b, EQ, D_ARG(1), 4096, L_NEXT, L_TRAP);
    cmp64(&b, EQ, D_ARG(3), 0x100001, L_NEXT, L_TRAP); /* MAP_SHARED | MAP_FIXED_NOREPLACE */
    cmp64(&b, EQ, D_ARG(4), p->pool_fd, L_NEXT, L_TRAP);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_ARG(2)));
    emit(&b, JEQ_K, L_NEXT, L_TRAP, 0);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(2)));
    emit(&b, JEQ_K, L_MMAP_PROT, L_NEXT, 1);
    emit(&b, JEQ_K, L_MMAP_PROT, L_TRAP, 3);
    place(&b, L_MMAP_PROT);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, HI(D_ARG(5)));
    emit(&b, JEQ_K, L_NEXT, L_TRAP, 0);
    emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(5)));
    emit(&b, JSET_K, L_TRAP, L_NEXT, 4095);
    emit(&b, JGE_K, L_TRAP, L_ALLOW, (uint32_t)p->pool_size);

    /* munmap: one page, outside ELRANGE and outside the runner's image. */
    place(&b, L_MUNMAP);
    cmp64(&b, EQ, D_ARG(1), 4096, L_NEXT, L_TRAP);
    cmp64(&b, LE, D_ARG(0), p->enclave_begin - 4096, L_MUNMAP_IMAGE, L_NEXT);
    cmp64(&b, GE, D_ARG(0), p->enclave_end, L_MUNMAP_IMAGE, L_TRAP);
    place(&b, L_MUNMAP_IMAGE);
    cmp64(&b, LE, D_ARG(0), p->image_begin - 4096, L_ALLOW, L_NEXT);
    cmp64(&b, GE, D_ARG(0), p->image_end, L_ALLOW, L_TRAP);

    /* rt_sigprocmask: a query into the one slot, or setting the one empty
       mask — enclave code can never block a signal. */
    place(&b, L_SIGMASK);
    cmp64(&b, EQ, D_ARG(3), 8, L_NEXT, L_TRAP);
    cmp64(&b, EQ, D_ARG(1), 0, L_NEXT, L_SIGMASK_SET);
    cmp64(&b, EQ, D_ARG(2), p->mask_slot, L_ALLOW, L_TRAP);
    place(&b, L_SIGMASK_SET);
    cmp64(&b, EQ, D_ARG(1), p->empty_mask, L_NEXT, L_TRAP);
    cmp64(&b, EQ, D_ARG(2), 0, L_ALLOW, L_TRAP);

    /* arch_prctl (CPUs without FSGSBASE): set FS/GS, or read them into the
       one slot. The code is an int. */
    if (!p->fsgsbase) {
        place(&b, L_ARCH);
        emit(&b, LD_ABS, L_NEXT, L_NEXT, LO(D_ARG(0)));
        emit(&b, JEQ_K, L_ALLOW, L_NEXT, 0x1001); /* ARCH_SET_GS */
        emit(&b, JEQ_K, L_ALLOW, L_NEXT, 0x1002); /* ARCH_SET_FS */
        emit(&b, JEQ_K, L_ARCH_GET, L_NEXT, 0x1003); /* ARCH_GET_FS */
        emit(&b, JEQ_K, L_ARCH_GET, L_TRAP, 0x1004); /* ARCH_GET_GS */
        place(&b, L_ARCH_GET);
        cmp64(&b, EQ, D_ARG(1), p->base_slot, L_ALLOW, L_TRAP);
    }

    place(&b, L_TRAP);
    emit(&b, RET_K, L_NEXT, L_NEXT, RET_TRAP);
    place(&b, L_ALLOW);
    emit(&b, RET_K, L_NEXT, L_NEXT, RET_ALLOW);
    return resolve(&b);
}
