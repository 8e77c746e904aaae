/* The plain test enclave: operations the vsgx tests drive through EENTER. */
#include <stddef.h>
#include <stdint.h>

#include "aes_cmac.h"
#include "encl.h"
#include "enclu.h"
#include "sha256.h"

extern uint8_t __encl_base[];
extern uint8_t encl_ssa[];
uint64_t encl_read_via_rax(uint64_t *addr);
uint64_t encl_divide(uint64_t dividend, uint64_t divisor);
void encl_jump(const uint64_t *registers);
uint64_t encl_abi_syscall(uint64_t rax);
uint64_t encl_abi_int80(uint64_t rax);
uint64_t encl_abi_sysenter(uint64_t rax);

static uint8_t encl_buffer[8192] __attribute__((section(".data.encl_buffer"), aligned(4096))) = {1};
static volatile uint64_t encl_flag;
/* A secret that exists only inside the enclave (the canary of the tests). */
static uint8_t encl_secret[4096] __attribute__((aligned(4096)));

static struct gprsgx *ssa_gprs(uint64_t tcs, uint64_t frame)
{
    uint64_t index = (tcs - (uint64_t)__encl_base) / 4096;
    uint8_t *start = encl_ssa + (index * ENCL_NSSA + frame) * 4096;
    return (struct gprsgx *)(start + 4096 - sizeof(struct gprsgx));
}

static void copy(void *dst, const void *src, size_t n)
{
    volatile uint8_t *d = dst;
    const volatile uint8_t *s = src;
    while (n--)
        *d++ = *s++;
}

static uint64_t get_report_key(const struct sgx_report *report, uint8_t key[16])
{
    struct sgx_keyrequest request = {0};
    uint8_t out[16] __attribute__((aligned(16)));
    request.keyname = SGX_KEYNAME_REPORT;
    copy(request.keyid, report->keyid, 32);
    uint64_t ret = enclu(ENCLU_EGETKEY, (uint64_t)&request, (uint64_t)out, 0);
    copy(key, out, 16);
    return ret;
}

static void do_handle_exception(uint64_t *op, uint64_t cssa, uint64_t tcs)
{
    if (cssa == 0) {
        op[3] = ~0ull;
        return;
    }
    struct gprsgx *g = ssa_gprs(tcs, cssa - 1);
    struct exinfo *x = (struct exinfo *)((uint8_t *)g - sizeof(struct exinfo));
    op[3] = g->exitinfo;
    op[4] = x->maddr;
    op[5] = x->errcd;
    op[6] = g->rip;
    switch (op[1]) {
    case FIX_SET_RAX:
        g->rax = op[2];
        break;
    case FIX_SET_RCX:
        g->rcx = op[2];
        break;
    case FIX_SKIP:
        g->rip += op[2];
        break;
    case FIX_SET_RIP:
        g->rip = op[2];
        break;
    case FIX_EMODPE: {
        struct sgx_secinfo secinfo = {.flags = op[2]};
        enclu(ENCLU_EMODPE, (uint64_t)&secinfo, x->maddr & ~0xfffull, 0);
        break;
    }
    default:
        break;
    }
}

static uint64_t recurse(uint64_t depth)
{
    volatile uint8_t pad[512];
    pad[0] = (uint8_t)depth;
    if (depth == 0)
        return pad[0];
    return recurse(depth - 1) + pad[0];
}

void encl_body(uint64_t *op, uint64_t cssa, uint64_t tcs)
{
    switch (op[0]) {
    case OP_NOP:
        break;
    case OP_PUT_BUFFER:
        copy(encl_buffer, &op[1], 8);
        break;
    case OP_GET_BUFFER:
        copy(&op[1], encl_buffer, 8);
        break;
    case OP_PUT_ADDRESS:
        copy((void *)op[2], &op[1], 8);
        break;
    case OP_GET_ADDRESS:
        copy(&op[1], (void *)op[2], 8);
        break;
    case OP_EACCEPT: {
        struct sgx_secinfo secinfo = {.flags = op[2]};
        op[3] = enclu(ENCLU_EACCEPT, (uint64_t)&secinfo, op[1], 0);
        break;
    }
    case OP_EMODPE: {
        struct sgx_secinfo secinfo = {.flags = op[2]};
        enclu(ENCLU_EMODPE, (uint64_t)&secinfo, op[1], 0);
        break;
    }
    case OP_EACCEPTCOPY: {
        struct sgx_secinfo secinfo = {.flags = op[2]};
        op[4] = enclu(ENCLU_EACCEPTCOPY, (uint64_t)&secinfo, op[1], op[3]);
        break;
    }
    case OP_INIT_TCS_PAGE: {
        volatile struct encl_tcs *tcs_page = (struct encl_tcs *)op[1];
        volatile uint64_t *words = (volatile uint64_t *)op[1];
        for (size_t i = 0; i < sizeof(struct encl_tcs) / 8; i++)
            words[i] = 0;
        tcs_page->ossa = op[2];
        tcs_page->nssa = 1;
        tcs_page->oentry = op[3];
        tcs_page->fslimit = tcs_page->gslimit = 0xFFFFFFFF;
        break;
    }
    case OP_DIVIDE:
        op[3] = encl_divide(op[1], op[2]);
        break;
    case OP_READ_VIA_RAX:
        op[2] = encl_read_via_rax((uint64_t *)op[1]);
        break;
    case OP_EGETKEY: {
        struct sgx_keyrequest request;
        uint8_t key[16] __attribute__((aligned(16)));
        copy(&request, &op[8], sizeof(request));
        op[1] = enclu(ENCLU_EGETKEY, (uint64_t)&request, (uint64_t)key, 0);
        copy(&op[2], key, 16);
        break;
    }
    case OP_EREPORT: {
        struct sgx_targetinfo target;
        uint8_t data[64] __attribute__((aligned(128)));
        struct sgx_report report;
        copy(&target, &op[8], 512);
        copy(data, &op[72], 64);
        enclu(ENCLU_EREPORT, (uint64_t)&target, (uint64_t)data, (uint64_t)&report);
        copy(&op[80], &report, 432);
        break;
    }
    case OP_VERIFY_REPORT: {
        struct sgx_report report;
        uint8_t key[16], mac[16];
        copy(&report, &op[8], 432);
        uint64_t ret = get_report_key(&report, key);
        if (ret) {
            op[1] = ret;
            break;
        }
        aes128_cmac(key, report.body, sizeof(report.body), mac);
        op[1] = constant_time_equal(mac, report.mac, 16) ? 0 : 1;
        break;
    }
    case OP_SYSCALL: {
        uint64_t rax = 39; /* getpid */
        __asm__ volatile("syscall" : "+a"(rax) : : "rcx", "r11", "memory");
        op[1] = rax;
        break;
    }
    case OP_CPUID: {
        uint32_t a = 0, b, c = 0, d;
        __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
        op[1] = a;
        break;
    }
    case OP_RDTSC: {
        uint32_t lo, hi;
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        op[1] = (uint64_t)hi << 32 | lo;
        break;
    }
    case OP_SHA256: {
        uint8_t digest[32];
        const uint8_t *data = __encl_base + op[1];
        sha256(data, op[2], digest);
        for (uint64_t i = 1; i < op[3]; i++)
            sha256(digest, 32, digest);
        copy(&op[4], digest, 32);
        break;
    }
    case OP_WAIT_FLAG: {
        uint64_t limit = op[2];
        op[3] = 0;
        for (uint64_t i = 0; i < limit; i++) {
            if (encl_flag == op[1]) {
                op[3] = 1;
                break;
            }
            __asm__ volatile("pause");
        }
        break;
    }
    case OP_SET_FLAG:
        encl_flag = op[1];
        break;
    case OP_HANDLE_EXCEPTION:
        do_handle_exception(op, cssa, tcs);
        break;
    case OP_COPY:
        copy((void *)op[2], (const void *)op[1], op[3]);
        break;
    case OP_INT3:
        __asm__ volatile("int3");
        break;
    case OP_RECURSE:
        op[2] = recurse(op[1]);
        break;
    case OP_BAD_JUMP:
        ((void (*)(void))op[1])();
        break;
    case OP_MAKE_SECRET:
        for (int i = 0; i < 4; i++) {
            uint64_t value;
            unsigned char ok;
            do
                __asm__ volatile("rdrand %0; setc %1" : "=r"(value), "=qm"(ok));
            while (!ok);
            copy(encl_secret + 8 * i, &value, 8);
        }
        break;
    case OP_TOUCH: {
        uint64_t sum = 0;
        for (uint64_t i = 0; i < op[2]; i++)
            sum += *(volatile uint64_t *)(op[1] + 4096 * i);
        op[3] = sum;
        break;
    }
    case OP_JUMP:
        encl_jump(&op[1]);
        break;
    case OP_SYSCALL_ABI:
        op[3] = op[1] == 0 ? encl_abi_syscall(op[2])
                : op[1] == 1 ? encl_abi_int80(op[2])
                : encl_abi_sysenter(op[2]);
        break;
    case OP_SECRET_HASH: {
        uint8_t digest[32];
        sha256(encl_secret, 32, digest);
        copy(&op[1], digest, 32);
        break;
    }
    default:
        break;
    }
}
