/* ENCLU from enclave C code (vsgx enclave runtime). */
#ifndef VSGX_ENCLU_H
#define VSGX_ENCLU_H
#include <stdint.h>

#define ENCLU_EREPORT 0
#define ENCLU_EGETKEY 1
#define ENCLU_EEXIT 4
#define ENCLU_EACCEPT 5
#define ENCLU_EMODPE 6
#define ENCLU_EACCEPTCOPY 7

#define SGX_KEYNAME_REPORT 3
#define SGX_KEYNAME_SEAL 4
#define SGX_KEYPOLICY_MRENCLAVE 0x1
#define SGX_KEYPOLICY_MRSIGNER 0x2

#define SGX_PAGE_R 0x1
#define SGX_PAGE_W 0x2
#define SGX_PAGE_X 0x4
#define SGX_PAGE_PENDING 0x8
#define SGX_PAGE_MODIFIED 0x10
#define SGX_PAGE_PR 0x20
#define SGX_PT_TCS (1 << 8)
#define SGX_PT_REG (2 << 8)
#define SGX_PT_TRIM (4 << 8)

static inline uint64_t enclu(uint64_t leaf, uint64_t rbx, uint64_t rcx, uint64_t rdx)
{
    uint64_t rax = leaf;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd7"
                     : "+a"(rax), "+b"(rbx), "+c"(rcx), "+d"(rdx)
                     :
                     : "memory", "cc");
    return rax;
}

struct sgx_secinfo {
    uint64_t flags;
    uint8_t reserved[56];
} __attribute__((aligned(64)));

struct sgx_keyrequest {
    uint16_t keyname;
    uint16_t keypolicy;
    uint16_t isvsvn;
    uint8_t cet_attributes_mask;
    uint8_t reserved1;
    uint8_t cpusvn[16];
    uint64_t attributemask;
    uint64_t xfrmmask;
    uint8_t keyid[32];
    uint32_t miscmask;
    uint16_t configsvn;
    uint8_t reserved2[434];
} __attribute__((aligned(512)));

struct sgx_report {
    uint8_t body[384];
    uint8_t keyid[32];
    uint8_t mac[16];
} __attribute__((aligned(512)));

struct sgx_targetinfo {
    uint8_t bytes[512];
} __attribute__((aligned(512)));

#define SGX_REPORT_BODY_MRENCLAVE 64
#define SGX_REPORT_BODY_MRSIGNER 128
#define SGX_REPORT_BODY_ATTRIBUTES 48
#define SGX_REPORT_BODY_REPORTDATA 320
/* REPORT is 432 bytes; aligned(512) pads the C struct to 512, so copies
   to and from callers' buffers use this size, not sizeof. */
#define SGX_REPORT_SIZE 432

#endif
