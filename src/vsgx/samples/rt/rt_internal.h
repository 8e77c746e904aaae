/* Internal layout shared by the runtime's C and assembly. */
#ifndef VSGX_RT_INTERNAL_H
#define VSGX_RT_INTERNAL_H

#define ECMD_ECALL 0
#define ECMD_INIT_ENCLAVE (-1)
#define ECMD_ORET (-2)
#define ECMD_EXCEPT (-3)
#define ECMD_UNINIT_ENCLAVE (-5)
#define ECMD_ECALL_PTHREAD (-6)
#define OCMD_ERET (-1)
#define OCALL_FLAG 0x4F434944
#define STATIC_STACK_SIZE 4096

/* struct vsgx_global_data offsets (the signer patches this block). */
#define GD_STACK_TOP_FROM_TCS 32

/* struct thread_data offsets (at the GS base). */
#define TD_SELF_ADDR 0
#define TD_LAST_SP 8
#define TD_STACK_BASE 16
#define TD_STACK_LIMIT 24
#define TD_FIRST_SSA_GPR 32

/* ocall context offsets (see rt_entry.S do_ocall). */
#define CTX_PRE_LAST_SP 0
#define CTX_FLAG 8
#define CTX_INDEX 16

#define SSA_URSP 144
#define SSA_URBP 152

#ifndef __ASSEMBLER__
#include <stdint.h>

struct vsgx_global_data {
    uint64_t magic;
    uint64_t enclave_size;
    uint64_t heap_offset;
    uint64_t heap_size;
    int64_t stack_top_from_tcs;
    uint64_t stack_size;
    int64_t ssa_from_tcs;
    int64_t td_from_tcs;
    uint32_t tcs_count;
    uint32_t tcs_policy;
    uint32_t nssa;
    uint32_t ssa_frame_size;
};

struct thread_data {
    uint64_t self_addr;
    uint64_t last_sp;
    uint64_t stack_base;
    uint64_t stack_limit;
    uint64_t first_ssa_gpr;
    uint64_t stack_guard;
    uint64_t flags;
    uint64_t xsave_size;
    uint64_t last_error;
    uint64_t tcs;
    int64_t exception_flag;
};

struct ssa_gpr {
    uint64_t rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rflags, rip, ursp, urbp;
    uint32_t exitinfo;
    uint8_t reserved[3];
    uint8_t aexnotify;
    uint64_t fsbase, gsbase;
};

struct ocall_context {
    uint64_t pre_last_sp;
    uint64_t flag;
    uint64_t index;
    uint64_t ms;
    uint64_t r15, r14, r13, r12, rbx, rbp;
    uint64_t return_address;
};

extern struct vsgx_global_data g_vsgx_global_data;
uint64_t do_ocall(uint64_t index, void *ms);
void asm_oret(struct ocall_context *ctx, uint64_t status) __attribute__((noreturn));
void continue_execution(void *info) __attribute__((noreturn));
void internal_handle_exception(void *info);
#endif

#endif
