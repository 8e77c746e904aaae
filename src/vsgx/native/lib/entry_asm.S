/* __vdso_sgx_enter_enclave with the kernel's behaviour
   (arch/x86/entry/vdso/vsgx.S and the uapi's struct sgx_enclave_run): the
   same prologue, checks, exit paths and user-handler protocol. Where the
   kernel's vDSO executes ENCLU, this one calls vsgx_enclu_trampoline, which
   hands every register to C and resumes wherever the exit says (the
   instruction after the call on EEXIT, the exception path after an AEX or a
   faulting ENCLU, as the kernel's exception-table fixup does). */

#define RUN_OFFSET 16          /* struct sgx_enclave_run *, relative to %rbp */
#define RUN_TCS 0
#define RUN_FUNCTION 8
#define RUN_VECTOR 12
#define RUN_ERROR_CODE 14
#define RUN_ADDRESS 16
#define RUN_USER_HANDLER 24
#define RUN_RESERVED_START 40
#define RUN_RESERVED_END 256
#define EENTER 2
#define ERESUME 3
#define EEXIT 4
#define EINVAL 22
#define EFAULT 14

    .text
    .globl vsgx_vdso_sgx_enter_enclave
    .hidden vsgx_vdso_sgx_enter_enclave
    .type vsgx_vdso_sgx_enter_enclave, @function
    .globl vsgx_vdso_aep
    .hidden vsgx_vdso_aep
    .globl vsgx_vdso_after_enclu
    .hidden vsgx_vdso_after_enclu
    .globl vsgx_vdso_handle_exception
    .hidden vsgx_vdso_handle_exception
    .align 16
vsgx_vdso_sgx_enter_enclave:
    .cfi_startproc
    push %rbp
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset %rbp, 0
    mov %rsp, %rbp
    .cfi_def_cfa_register %rbp
    push %rbx
    .cfi_rel_offset %rbx, -8

    mov %ecx, %eax
.Lenter_enclave:
    cmp $EENTER, %eax
    jb .Linvalid_input
    cmp $ERESUME, %eax
    ja .Linvalid_input

    mov RUN_OFFSET(%rbp), %rcx
    mov $RUN_RESERVED_START, %rbx
1:
    cmpq $0, (%rcx, %rbx)
    jne .Linvalid_input
    add $8, %rbx
    cmpq $RUN_RESERVED_END, %rbx
    jne 1b

    mov RUN_TCS(%rcx), %rbx
    lea vsgx_vdso_aep(%rip), %rcx
vsgx_vdso_aep:
    call vsgx_enclu_trampoline      /* the ENCLU: EENTER or ERESUME */
vsgx_vdso_after_enclu:
    mov RUN_OFFSET(%rbp), %rbx
    movl $EEXIT, RUN_FUNCTION(%rbx)

.Lhandle_exit:
    cmpq $0, RUN_USER_HANDLER(%rbx)
    jne .Linvoke_userspace_handler
    xor %eax, %eax

.Lout:
    pop %rbx
    leave
    .cfi_def_cfa %rsp, 8
    ret
    .cfi_def_cfa %rbp, 16

.Linvalid_input:
    mov $(-EINVAL), %eax
    jmp .Lout

vsgx_vdso_handle_exception:
    mov RUN_OFFSET(%rbp), %rbx
    mov %eax, RUN_FUNCTION(%rbx)
    mov %di, RUN_VECTOR(%rbx)
    mov %si, RUN_ERROR_CODE(%rbx)
    mov %rdx, RUN_ADDRESS(%rbx)
    jmp .Lhandle_exit

.Linvoke_userspace_handler:
    mov %rsp, %rcx                  /* the untrusted RSP at the exit */
    mov %rbx, %rax
    mov %rsp, %rbx
    and $0xf, %rbx
    and $-0x10, %rsp
    push %rax
    push %rax                       /* run, the seventh argument */
    cld
    mov RUN_USER_HANDLER(%rax), %rax
    lfence
    call *%rax
    lea 0x10(%rsp, %rbx), %rsp
    cmp $0, %eax
    jle .Lout
    jmp .Lenter_enclave
    .cfi_endproc
    .size vsgx_vdso_sgx_enter_enclave, .-vsgx_vdso_sgx_enter_enclave

/* Called at the ENCLU site: [rsp] is the return address, every other
   register is as at the ENCLU. Saves them (vsgx_exec.h order) below the
   caller's stack, runs vsgx_enclu_emulate on this thread's library stack
   (the enclave writes the program's stack below its RSP during the entry),
   then loads the registers it returns and continues at their RIP. */
    .globl vsgx_enclu_trampoline
    .hidden vsgx_enclu_trampoline
    .type vsgx_enclu_trampoline, @function
    .align 16
vsgx_enclu_trampoline:
    pushfq
    lea -160(%rsp), %rsp
    mov %rax, 0(%rsp)
    mov %rcx, 8(%rsp)
    mov %rdx, 16(%rsp)
    mov %rbx, 24(%rsp)
    mov %rbp, 40(%rsp)
    mov %rsi, 48(%rsp)
    mov %rdi, 56(%rsp)
    mov %r8, 64(%rsp)
    mov %r9, 72(%rsp)
    mov %r10, 80(%rsp)
    mov %r11, 88(%rsp)
    mov %r12, 96(%rsp)
    mov %r13, 104(%rsp)
    mov %r14, 112(%rsp)
    mov %r15, 120(%rsp)
    mov 160(%rsp), %rax
    mov %rax, 128(%rsp)             /* rflags */
    mov 168(%rsp), %rax
    mov %rax, 136(%rsp)             /* the return address: the ENCLU site + 5 */
    lea 176(%rsp), %rax
    mov %rax, 32(%rsp)              /* RSP at the ENCLU */
    mov %rsp, %rbx
    and $-16, %rsp
    call vsgx_library_stack
    test %rax, %rax
    jz 1f
    mov %rax, %rsp
1:
    and $-16, %rsp
    mov %rbx, %rdi
    call vsgx_enclu_emulate         /* returns the registers to load */
    mov %rax, %rsp
    pop %rax
    pop %rcx
    pop %rdx
    pop %rbx
    lea 8(%rsp), %rsp               /* RSP is loaded last */
    pop %rbp
    pop %rsi
    pop %rdi
    pop %r8
    pop %r9
    pop %r10
    pop %r11
    pop %r12
    pop %r13
    pop %r14
    pop %r15
    /* vsgx_enclu_emulate put RFLAGS and RIP just below the new RSP and
       left RSP - 16 in the RSP slot. */
    mov -96(%rsp), %rsp
    popfq
    ret
    .size vsgx_enclu_trampoline, .-vsgx_enclu_trampoline

/* int vsgx_guarded_copy(void *to, const void *from, size_t length): 0, or
   -EFAULT when either side faults (signals.c moves a SIGSEGV or SIGBUS at
   the copy to the fixup, as the kernel's exception table does for
   copy_from_user). A copy the program's memory may not allow, without the
   1.4 us of a process_vm_readv per page. */
    .globl vsgx_guarded_copy
    .hidden vsgx_guarded_copy
    .type vsgx_guarded_copy, @function
    .globl vsgx_guarded_copy_at
    .hidden vsgx_guarded_copy_at
    .globl vsgx_guarded_copy_fixup
    .hidden vsgx_guarded_copy_fixup
    .align 16
vsgx_guarded_copy:
    mov %rdx, %rcx
vsgx_guarded_copy_at:
    rep movsb
    xor %eax, %eax
    ret
vsgx_guarded_copy_fixup:
    mov $(-EFAULT), %eax
    ret
    .size vsgx_guarded_copy, .-vsgx_guarded_copy

/* void vsgx_call_on_stack(void (*fn)(void *), void *arg, void *top) */
    .globl vsgx_call_on_stack
    .hidden vsgx_call_on_stack
    .type vsgx_call_on_stack, @function
vsgx_call_on_stack:
    push %rbp
    mov %rsp, %rbp
    test %rdx, %rdx
    jz 1f
    mov %rdx, %rsp
1:
    and $-16, %rsp
    mov %rdi, %rax
    mov %rsi, %rdi
    call *%rax
    leave
    ret
    .size vsgx_call_on_stack, .-vsgx_call_on_stack

    .section .note.GNU-stack, "", @progbits
