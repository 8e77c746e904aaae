/* Entry code and TCS pages of the plain test enclave (written for vsgx,
   following the conventions of the Linux SGX selftest enclave). */
#include "encl.h"

#define STACK_SIZE (ENCL_STACK_PAGES * 4096)
#define SSA_PER_TCS (ENCL_NSSA * 4096)

    .macro tcs index
    .balign 4096
    .quad 0                                     /* STATE */
    .quad 0                                     /* FLAGS */
    .quad encl_ssa + \index * SSA_PER_TCS       /* OSSA (linked at 0: an offset) */
    .long 0                                     /* CSSA */
    .long ENCL_NSSA                             /* NSSA */
    .quad encl_entry                            /* OENTRY */
    .quad 0                                     /* AEP */
    .quad encl_tls                              /* OFSBASE */
    .quad encl_tls                              /* OGSBASE */
    .long 0xFFFFFFFF                            /* FSLIMIT */
    .long 0xFFFFFFFF                            /* GSLIMIT */
    .fill 4024, 1, 0
    .endm

    .section .tcs, "aw"
    .set index, 0
    .rept ENCL_TCS_COUNT
    tcs index
    .set index, index + 1
    .endr

    .text
    .global encl_entry
    .type encl_entry, @function
/* RAX = CSSA, RBX = TCS, RCX = return address, RDI = op (0: register ABI). */
encl_entry:
    lea __encl_base(%rip), %r10
    mov %rbx, %r11
    sub %r10, %r11
    shr $12, %r11                   /* TCS index */
    lea 1(%r11), %r12
    test %rax, %rax
    jnz 1f
    imul $STACK_SIZE, %r12
    lea encl_stacks(%rip), %r13
    jmp 2f
1:  shl $12, %r12                   /* CSSA > 0: this TCS's exception stack */
    lea encl_exc_stacks(%rip), %r13
2:  add %r13, %r12
    jmp encl_entry_core

    .global encl_dyn_entry
    .type encl_dyn_entry, @function
/* Entry of a TCS made at run time (EMODT): its stack is the page below it. */
encl_dyn_entry:
    mov %rbx, %r12
    jmp encl_entry_core

encl_entry_core:
    mov %rsp, %r13
    mov %r12, %rsp
    push %r13                       /* untrusted RSP */
    push %rbp                       /* untrusted RBP */
    push %rcx                       /* EEXIT target */
    push %rax                       /* CSSA */
    test %rdi, %rdi
    jnz 3f
    /* Register ABI: RSI = RSI * 2 + RDX + R8 + R9, RDI = 0x5eed. */
    lea (%rdx, %rsi, 2), %rsi
    add %r8, %rsi
    add %r9, %rsi
    mov $0x5eed, %edi
    jmp 4f
3:  mov %rax, %rsi                  /* encl_body(op, cssa, tcs) */
    mov %rbx, %rdx
    call encl_body
    xor %edi, %edi
    xor %esi, %esi
4:  pop %rax
    pop %rbx
    pop %rbp
    pop %r13
    mov %r13, %rsp
    xor %ecx, %ecx
    xor %edx, %edx
    xor %r8d, %r8d
    xor %r9d, %r9d
    xor %r10d, %r10d
    xor %r11d, %r11d
    xor %r12d, %r12d
    xor %r13d, %r13d
    mov $4, %eax                    /* EEXIT */
    .byte 0x0f, 0x01, 0xd7

/* u64 encl_read_via_rax(u64 *addr): the load the exception tests fault on. */
    .global encl_read_via_rax
encl_read_via_rax:
    mov %rdi, %rax
    mov (%rax), %rax
    ret

/* u64 encl_divide(u64 dividend, u64 divisor): DIV with the divisor in RCX. */
    .global encl_divide
encl_divide:
    mov %rdi, %rax
    mov %rsi, %rcx
    xor %edx, %edx
    div %rcx
    ret

    .bss
    .balign 4096
    .global encl_ssa
encl_ssa:
    .skip ENCL_TCS_COUNT * SSA_PER_TCS
encl_stacks:
    .skip ENCL_TCS_COUNT * STACK_SIZE
encl_exc_stacks:
    .skip ENCL_TCS_COUNT * 4096
    .global encl_tls
encl_tls:
    .skip 4096

    .section .note.GNU-stack, "", @progbits
