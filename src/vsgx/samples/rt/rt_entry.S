/* vsgx enclave runtime: entry, OCALL exit, ORET return, exception resume.
   Register contract at EENTER (Intel SGX SDK convention): RAX = CSSA,
   RBX = TCS, RCX = return address, RDI = command (ECMD_* or ECALL ordinal),
   RSI = marshalling struct / OCALL status. */
#include "rt_internal.h"

#define ENCLU .byte 0x0f, 0x01, 0xd7
#define METADATA_SIZE 0x3000

    .macro clear_scratch
    xor %ecx, %ecx
    xor %edx, %edx
    xor %r8d, %r8d
    xor %r9d, %r9d
    xor %r10d, %r10d
    xor %r11d, %r11d
    xor %r12d, %r12d
    xor %r13d, %r13d
    xor %r14d, %r14d
    xor %r15d, %r15d
    .endm

    .text
    .global enclave_entry
    .type enclave_entry, @function
enclave_entry:
    cld
    /* Stack top of this thread: TCS + g_vsgx_global_data.stack_top_from_tcs. */
    mov g_vsgx_global_data+GD_STACK_TOP_FROM_TCS(%rip), %r10
    add %rbx, %r10
    test %rax, %rax
    jnz 1f
    mov %gs:TD_LAST_SP, %r11        /* pending OCALL frame or root stack base */
    test %r11, %r11
    jnz 2f
    lea -STATIC_STACK_SIZE(%r10), %r11
    jmp 2f
1:  mov %r10, %r11                  /* CSSA > 0: the static stack above the thread stack */
2:  xchg %r11, %rsp
    /* The ECALL frame: [S-8] return address, [S-16] URBP, [S-24] URSP. */
    push %rcx
    push %rbp
    mov %rsp, %rbp
    push %r11
    push %rax
    and $-16, %rsp
    movslq %edi, %rdi
    mov %rbx, %rdx
    mov %rax, %rcx
    call enter_enclave
    mov %rax, %rsi
    mov $OCMD_ERET, %rdi
    mov -8(%rbp), %r11
    mov %rbp, %rsp
    pop %rbp
    pop %rbx
    mov %r11, %rsp
    clear_scratch
    add %rdx, %rdx                  /* flags to a fixed state */
    mov $4, %eax                    /* EEXIT */
    ENCLU
    ud2

/* uint64_t do_ocall(uint64_t index, void *ms): leave through EEXIT with
   RDI = index, RSI = ms on the untrusted stack; ECMD_ORET comes back through
   asm_oret with RAX = the OCALL's status. */
    .global do_ocall
    .type do_ocall, @function
do_ocall:
    push %rbp
    mov %rsp, %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    push %rsi
    push %rdi
    pushq $OCALL_FLAG
    mov %gs:TD_LAST_SP, %rax
    push %rax                       /* ctx.pre_last_sp */
    mov %rsp, %gs:TD_LAST_SP
    mov -8(%rax), %rbx              /* return address of the open ECALL frame */
    mov %gs:TD_FIRST_SSA_GPR, %rax
    mov SSA_URSP(%rax), %rsp
    mov SSA_URBP(%rax), %rbp
    clear_scratch
    add %rdx, %rdx
    mov $4, %eax
    ENCLU
    ud2

/* void asm_oret(struct ocall_context *ctx, uint64_t status) */
    .global asm_oret
    .type asm_oret, @function
asm_oret:
    mov %rdi, %rsp
    add $32, %rsp                   /* pre_last_sp, flag, index, ms */
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    mov %rsi, %rax
    ret

/* void continue_execution(sgx_exception_info_t *info): resume the
   interrupted context as the handler left it. */
    .global continue_execution
    .type continue_execution, @function
continue_execution:
    mov %rdi, %rax
    mov 32(%rax), %rcx              /* context RSP */
    sub $16, %rcx
    mov 136(%rax), %rdx             /* RIP */
    mov %rdx, 8(%rcx)
    mov 128(%rax), %rdx             /* RFLAGS */
    mov %rdx, (%rcx)
    mov %rcx, %rsp
    mov 8(%rax), %rcx
    mov 16(%rax), %rdx
    mov 24(%rax), %rbx
    mov 40(%rax), %rbp
    mov 48(%rax), %rsi
    mov 56(%rax), %rdi
    mov 64(%rax), %r8
    mov 72(%rax), %r9
    mov 80(%rax), %r10
    mov 88(%rax), %r11
    mov 96(%rax), %r12
    mov 104(%rax), %r13
    mov 112(%rax), %r14
    mov 120(%rax), %r15
    mov 0(%rax), %rax
    popfq
    ret

/* The metadata note `vsgx sign` fills in (Intel's trts reserves it the same
   way: name "sgx_metadata" without padding, then the metadata area). */
    .section .note.sgxmeta, "", @note
    .p2align 2
    .long 13
    .long METADATA_SIZE
    .long 1
    .ascii "sgx_metadata\0"
    .fill METADATA_SIZE, 1, 0
    .p2align 2

    .section .note.GNU-stack, "", @progbits
