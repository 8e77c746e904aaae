/* Trusted-side declarations for hello.edl (what edger8r's hello_t.h holds). */
#ifndef HELLO_T_H
#define HELLO_T_H
#include <stddef.h>
#include <stdint.h>

#include "vsgx_rt.h"

void *malloc(size_t size);
void free(void *p);

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

sgx_status_t ocall_print(const char *text);
sgx_status_t ocall_nop(void);
sgx_status_t ocall_call_back(int *retval, int x);
sgx_status_t sgx_oc_cpuidex(int cpuinfo[4], int leaf, int subleaf);

#endif
