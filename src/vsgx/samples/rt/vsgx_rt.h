/* vsgx enclave runtime: the trusted side of the Intel SGX SDK's ENCLU-level
   protocol (ECMD_* commands in RDI, ECALL table, OCALLs through the
   untrusted stack recorded in SSA[0], two-phase exception handling), written
   for vsgx's own sample and test enclaves. Public API for enclave code. */
#ifndef VSGX_RT_H
#define VSGX_RT_H
#include <stddef.h>
#include <stdint.h>

#include "enclu.h"

typedef uint32_t sgx_status_t;

#define SGX_SUCCESS 0x0
#define SGX_ERROR_UNEXPECTED 0x1
#define SGX_ERROR_INVALID_PARAMETER 0x2
#define SGX_ERROR_OUT_OF_MEMORY 0x3
#define SGX_ERROR_INVALID_STATE 0x5
#define SGX_ERROR_INVALID_FUNCTION 0x1001
#define SGX_ERROR_OUT_OF_TCS 0x1003
#define SGX_ERROR_ENCLAVE_CRASHED 0x1006
#define SGX_ERROR_ECALL_NOT_ALLOWED 0x1007
#define SGX_ERROR_OCALL_NOT_ALLOWED 0x1008
#define SGX_ERROR_STACK_OVERRUN 0x1009
#define SGX_ERROR_MAC_MISMATCH 0x3001
#define SGX_ERROR_INVALID_SIGNATURE 0x3002 /* not used by the SDK here */

/* ECALL table, laid out as edger8r's g_ecall_table. */
struct ecall_entry {
    const void *ecall_addr;
    uint8_t is_priv;
    uint8_t is_switchless;
};
struct ecall_table {
    size_t nr_ecall;
    struct ecall_entry ecall_table[];
};
extern const struct ecall_table g_ecall_table;

/* OCALL x ECALL allow matrix, as edger8r's g_dyn_entry_table. */
struct dyn_entry_table {
    size_t nr_ocall;
    uint8_t entry_table[];
};
extern const struct dyn_entry_table g_dyn_entry_table;

typedef sgx_status_t (*ecall_fn)(void *ms);

sgx_status_t sgx_ocall(uint32_t index, void *ms);
void *sgx_ocalloc(size_t size);
void sgx_ocfree(void);
int sgx_is_within_enclave(const void *addr, size_t size);
int sgx_is_outside_enclave(const void *addr, size_t size);
void *vsgx_enclave_base(void);
/* The TCS this thread entered on (how the SDK names threads to the urts). */
uint64_t vsgx_self_tcs(void);
/* Defined by an enclave that starts threads through pthread_create_ocall:
   runs on the new thread's TCS (ECMD_ECALL_PTHREAD) and stores the TCS to
   wake when it ends in *waiter. */
sgx_status_t vsgx_pthread_run(uint64_t *waiter) __attribute__((weak));

/* Exceptions (sgx_trts_exception.h shape). */
typedef struct {
    uint64_t rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rflags, rip;
} sgx_cpu_context_t;
typedef struct {
    sgx_cpu_context_t cpu_context;
    uint32_t exception_vector;
    uint32_t exception_type;
    uint64_t faulting_address;
    uint32_t error_code;
    uint32_t reserved;
} sgx_exception_info_t;
#define EXCEPTION_CONTINUE_SEARCH 0
#define EXCEPTION_CONTINUE_EXECUTION (-1)
typedef int (*sgx_exception_handler_t)(sgx_exception_info_t *info);
int sgx_register_exception_handler(sgx_exception_handler_t handler);
void vsgx_abort(void) __attribute__((noreturn));

/* Attestation and sealing built on EREPORT/EGETKEY. */
sgx_status_t vsgx_create_report(const struct sgx_targetinfo *target, const uint8_t data[64],
                                struct sgx_report *report);
sgx_status_t vsgx_verify_report(const struct sgx_report *report);
sgx_status_t vsgx_self_targetinfo(struct sgx_targetinfo *target);

/* The MAC comes first: it covers everything after it (header and ciphertext). */
struct vsgx_sealed_header {
    uint8_t mac[16];
    uint8_t keyid[32];
    uint8_t cpusvn[16];
    uint16_t isvsvn;
    uint16_t keypolicy;
    uint32_t length;
    uint8_t iv[16];
};
size_t vsgx_sealed_size(size_t length);
sgx_status_t vsgx_seal(uint16_t keypolicy, const void *plaintext, size_t length, void *sealed,
                       size_t capacity);
sgx_status_t vsgx_unseal(const void *sealed, size_t sealed_length, void *plaintext,
                         size_t capacity, size_t *length);
int vsgx_rdrand64(uint64_t *value);

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

#endif
