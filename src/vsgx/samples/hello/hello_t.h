/* Trusted-side declarations for hello.edl (what edger8r's hello_t.h holds). */
#ifndef HELLO_T_H
#define HELLO_T_H
#include <stddef.h>
#include <stdint.h>

#include "vsgx_rt.h"

void *malloc(size_t size);
void free(void *p);

/* The SDK types the EDL passes (sgx_report.h), by size: the runtime's own
   struct sgx_report and sgx_targetinfo carry EREPORT's 512-byte alignment. */
typedef struct {
    uint8_t bytes[512];
} sgx_target_info_t;
typedef struct {
    uint8_t bytes[432];
} sgx_report_t;

int ecall_hello(const char *name);
int ecall_add(int a, int b);
void ecall_nop(void);
int ecall_ocall_nop(int count);
int ecall_seal(const uint8_t *secret, size_t length, uint8_t *sealed, size_t capacity);
int ecall_unseal(const uint8_t *sealed, size_t length, uint8_t *secret, size_t capacity);
int ecall_report(const uint8_t *target, const uint8_t *data, uint8_t *report);
int ecall_target_info(uint8_t *target);
int ecall_verify_report(const uint8_t *report);
int ecall_fault(int kind);
int ecall_cpuid(uint32_t leaf, uint32_t *regs);
int ecall_call_back(int x);
int ecall_private(int x);
int ecall_wait_event(void);
int ecall_wake_event(int how);
int ecall_spawn(int jobs);
sgx_status_t ecall_ra_begin(const sgx_target_info_t *qe_target_info, sgx_report_t *report,
                            uint8_t *public_key);
sgx_status_t ecall_ra_provision(const uint8_t *peer_public_key, const uint8_t *nonce,
                                const uint8_t *ciphertext, size_t length, const uint8_t *tag);
sgx_status_t ecall_ra_use(const uint8_t *challenge, uint8_t *mac);

sgx_status_t ocall_print(const char *text);
sgx_status_t ocall_nop(void);
sgx_status_t ocall_call_back(int *retval, int x);
sgx_status_t sgx_oc_cpuidex(int cpuinfo[4], int leaf, int subleaf);
sgx_status_t sgx_thread_wait_untrusted_event_ocall(int *retval, const void *self);
sgx_status_t sgx_thread_set_untrusted_event_ocall(int *retval, const void *waiter);
sgx_status_t sgx_thread_setwait_untrusted_events_ocall(int *retval, const void *waiter,
                                                       const void *self);
sgx_status_t sgx_thread_set_multiple_untrusted_events_ocall(int *retval, const void **waiters,
                                                            size_t total);
sgx_status_t pthread_wait_timeout_ocall(int *retval, unsigned long long waiter,
                                        unsigned long long timeout);
sgx_status_t pthread_create_ocall(int *retval, unsigned long long self);
sgx_status_t pthread_wakeup_ocall(int *retval, unsigned long long waiter);

#endif
