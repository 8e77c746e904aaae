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

/* Back to the EEXIT target with the untrusted stack, the scratch
   registers cleared; \leaf is where the leaf number goes. */
    .macro leave_enclave leaf
    pop %rax
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
    mov $4, \leaf                   /* EEXIT */
    .byte 0x0f, 0x01, 0xd7
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
    jmp 5f
3:  mov %rax, %rsi                  /* encl_body(op, cssa, tcs) */
    mov %rbx, %rdx
    call encl_body
    xor %edi, %edi
    xor %esi, %esi
4:  leave_enclave %eax
/* The register ABI leaves through an EEXIT of the form Intel's trts has
   (`mov $4, %rax`, seven bytes); the ops through the five-byte form. */
5:  leave_enclave %rax

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

/* void encl_jump(u64 regs[9]): target, rax, rdi, rsi, rdx, r10, r8, r9, rsp
   (0: keep). What a hostile enclave does to reach code outside ELRANGE.
   encl_jump_landing returns from it (the tests point SSA.RIP there). */
    .global encl_jump
encl_jump:
    push %rbx
    push %rbp
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, encl_jump_rsp(%rip)
    mov %rdi, %r11
    mov 0(%r11), %rcx
    mov 8(%r11), %rax
    mov 24(%r11), %rsi
    mov 32(%r11), %rdx
    mov 40(%r11), %r10
    mov 48(%r11), %r8
    mov 56(%r11), %r9
    mov 64(%r11), %rbx
    test %rbx, %rbx
    jz 1f
    mov %rbx, %rsp
1:  mov 16(%r11), %rdi
    jmp *%rcx

    .global encl_jump_landing
encl_jump_landing:
    mov encl_jump_rsp(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbp
    pop %rbx
    ret

/* u64 encl_abi_*(u64 rax): a system call by each x86 ABI; #UD in an enclave.
   The *_insn labels name the instruction (the tests skip it: 2 bytes). */
    .global encl_abi_syscall, encl_abi_syscall_insn
encl_abi_syscall:
    mov %rdi, %rax
encl_abi_syscall_insn:
    syscall
    ret

    .global encl_abi_int80, encl_abi_int80_insn
encl_abi_int80:
    mov %rdi, %rax
encl_abi_int80_insn:
    int $0x80
    ret

    .global encl_abi_sysenter, encl_abi_sysenter_insn
encl_abi_sysenter:
    mov %rdi, %rax
encl_abi_sysenter_insn:
    sysenter
    ret

    .bss
    .balign 8
encl_jump_rsp:
    .skip 8
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
