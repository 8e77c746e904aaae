/* The library vsgx injects into an unmodified SGX program (LD_PRELOAD):
   the program's SGX driver, vDSO entry and CPUID. Its parts follow the data:
   device.c (the enclave fd: open/ioctl/mmap), entry.c (the vDSO function and
   raw ENCLU traps), cpuid.c (CPUID answered from the EVM's model), memory.c
   (the program's pages served to the EVM), fast.c (entries straight to the
   TCS's runner, with runner/client.c), with channel.c (the launcher)
   and signals.c (our traps beside the program's own handlers); legacy.c
   (the older drivers' ioctls, /dev/isgx and the DCAP driver's /dev/sgx,
   over device.c) and aesm.c (aesmd's compiled-in socket, redirected). */
#ifndef VSGX_EXEC_H
#define VSGX_EXEC_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <ucontext.h>

#include "vsgx_device_protocol.h"

#define VSGX_HIDDEN __attribute__((visibility("hidden")))
#define VSGX_EXPORT __attribute__((visibility("default")))
#define PAGE 4096UL
#define PAGE_DOWN(x) ((uint64_t)(x) & ~(PAGE - 1))
#define PAGE_UP(x) (((uint64_t)(x) + PAGE - 1) & ~(PAGE - 1))

/* Registers in the EVM's order (vsgx.evm.executor.REG_NAMES). */
enum {
    R_RAX, R_RCX, R_RDX, R_RBX, R_RSP, R_RBP, R_RSI, R_RDI,
    R_R8, R_R9, R_R10, R_R11, R_R12, R_R13, R_R14, R_R15,
    R_RFLAGS, R_RIP, R_FSBASE, R_GSBASE, R_COUNT
};
_Static_assert(R_COUNT == VSGX_REGISTER_COUNT, "register count");

#define ENCLU_EENTER 2
#define ENCLU_ERESUME 3
#define ENCLU_EEXIT 4

/* main.c: process state */
extern VSGX_HIDDEN pid_t vsgx_pid;          /* this process (updated after fork) */
extern VSGX_HIDDEN int vsgx_debug;
VSGX_HIDDEN void vsgx_init(void);
VSGX_HIDDEN void vsgx_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
VSGX_HIDDEN void vsgx_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
VSGX_HIDDEN void *vsgx_real(const char *name);

/* Raw system calls (never through our own interposers). */
VSGX_HIDDEN long vsgx_syscall(long n, long a, long b, long c, long d, long e, long f);
VSGX_HIDDEN void *vsgx_mmap_raw(void *addr, size_t len, int prot, int flags, int fd, off_t off);
VSGX_HIDDEN int vsgx_munmap_raw(void *addr, size_t len);
VSGX_HIDDEN int vsgx_mprotect_raw(void *addr, size_t len, int prot);
VSGX_HIDDEN int vsgx_close_raw(int fd);

/* channel.c: the launcher */
struct vsgx_reply {
    uint8_t *data;   /* the thread's receive buffer */
    size_t length;
};
VSGX_HIDDEN int vsgx_channel_available(void);
/* Send one request (header + payload, gathered) and wait for its reply,
   serving the launcher's page requests meanwhile. Returns 0, or -errno. */
VSGX_HIDDEN int vsgx_call(const void *request, size_t request_size, const void *payload,
                          size_t payload_size, struct vsgx_reply *reply);
VSGX_HIDDEN int vsgx_call_iov(const struct iovec *iov, int count, struct vsgx_reply *reply);
/* vsgx_call, taking up to ``max_fds`` descriptors the reply carries
   (SCM_RIGHTS; the caller closes them). */
VSGX_HIDDEN int vsgx_call_fds(const void *request, size_t request_size,
                              struct vsgx_reply *reply, int *fds, int max_fds, int *count);
/* vsgx_call_iov without sending the pending mappings first (device.c's
   MAPS itself). */
VSGX_HIDDEN int vsgx_call_unflushed(const struct iovec *iov, int count,
                                    struct vsgx_reply *reply);
VSGX_HIDDEN void vsgx_channel_after_fork(void);
VSGX_HIDDEN int vsgx_channel_is_internal_fd(int fd);
VSGX_HIDDEN int vsgx_cpuid_model_from_launcher(void);

/* memory.c: the program's own memory */
VSGX_HIDDEN int vsgx_read_own(uint64_t address, void *out, size_t length);   /* 0 or -EFAULT */
VSGX_HIDDEN int vsgx_write_own(uint64_t address, const void *data, size_t length);
VSGX_HIDDEN int vsgx_page_state(uint64_t page);  /* VSGX_PAGE_* */
VSGX_HIDDEN void vsgx_maps_invalidate(void);
VSGX_HIDDEN uint64_t vsgx_maps_generation(void);
VSGX_HIDDEN int vsgx_serve_page_request(int fd, const uint8_t *message, size_t length);

/* device.c */
VSGX_HIDDEN uint64_t vsgx_enclave_file_for_tcs(uint64_t tcs);
VSGX_HIDDEN int vsgx_enclave_range(uint64_t file, uint64_t *base, uint64_t *size);
VSGX_HIDDEN void vsgx_device_after_fork(void);
/* Send the mappings answered here (MAPS) if there are any: 0 or -EIO. */
VSGX_HIDDEN int vsgx_maps_flush(void);
/* entry.c: entries in flight in this process (enclave code may be running):
   an munmap's UNMAP waits in the MAPS queue only while there are none. */
VSGX_HIDDEN extern _Atomic int vsgx_entries_running;

/* device.c for legacy.c: the legacy drivers' enclaves (device.c's
   FILE_ISGX = 3, FILE_DCAP = 4) and the in-kernel ioctl path they reuse. */
#define VSGX_FILE_ISGX 3
#define VSGX_FILE_DCAP 4
#define VSGX_LEGACY_INIT 0x4018a402u  /* isgx INIT {addr, sigstruct, einittoken} */
#define VSGX_DCAP_INIT 0x4010a402u    /* DCAP INIT {addr, sigstruct} */
#define VSGX_LEGACY_EXTEND 0x401aa401u  /* to the launcher: {offset, mrmask} EEXTENDs */
#define VSGX_EINITTOKEN_SIZE 304
struct sgx_file;
VSGX_HIDDEN struct sgx_file *vsgx_legacy_enclave_at(int kind, uint64_t address, uint64_t size,
                                                    int exact);
VSGX_HIDDEN int vsgx_legacy_created(const struct sgx_file *file, uint64_t *base, uint64_t *size,
                                    int *initialized);
VSGX_HIDDEN long vsgx_enclave_ioctl(struct sgx_file *file, unsigned long cmd,
                                    uint64_t arg_address);
VSGX_HIDDEN int vsgx_is_provision_fd(int fd);

/* legacy.c: /dev/isgx and the DCAP driver's /dev/sgx */
VSGX_HIDDEN long vsgx_legacy_ioctl(int dcap, unsigned long cmd, uint64_t arg_address);

/* entry.c */
struct vsgx_entry_result {
    uint32_t kind;       /* VSGX_EXIT_* */
    uint32_t vector, error_code;
    uint64_t address;
    int32_t status;
};
/* One EENTER/ERESUME: regs in (as at the ENCLU), regs out (as after it). */
VSGX_HIDDEN int vsgx_enter(uint32_t leaf, uint64_t *regs, uint64_t return_rip,
                           struct vsgx_entry_result *result);
VSGX_HIDDEN uint64_t vsgx_vdso_base(void);
VSGX_HIDDEN int vsgx_handle_raw_enclu(ucontext_t *uc);
VSGX_HIDDEN int vsgx_entry_from_reply(int ret, const struct vsgx_reply *reply, uint64_t *regs,
                                      struct vsgx_entry_result *result);

/* fast.c: entries straight to the TCS's runner. 1: the entry is done
   (``result``); 0: make it through the launcher, then vsgx_fast_done. */
VSGX_HIDDEN int vsgx_fast_enter_or_begin(uint32_t leaf, uint64_t file, uint64_t *regs,
                                         uint64_t return_rip, struct vsgx_entry_result *result,
                                         void **begun);
VSGX_HIDDEN void vsgx_fast_done(void *begun);
VSGX_HIDDEN void vsgx_fast_release_file(uint64_t file);
VSGX_HIDDEN void vsgx_fast_after_fork(void);
VSGX_HIDDEN void vsgx_thread_stack_release(void);

/* cpuid.c */
VSGX_HIDDEN void vsgx_cpuid_probe(void);
VSGX_HIDDEN void vsgx_cpuid_reload_model(void);
VSGX_HIDDEN void vsgx_cpuid_init(void);
VSGX_HIDDEN void vsgx_cpuid_rescan(void);
VSGX_HIDDEN int vsgx_handle_cpuid_trap(ucontext_t *uc, int faulting);
VSGX_HIDDEN void vsgx_cpuid_answer(uint32_t leaf, uint32_t subleaf, uint32_t out[4]);
extern VSGX_HIDDEN int vsgx_cpuid_faulting;

/* signals.c */
VSGX_HIDDEN void vsgx_signals_init(void);
VSGX_HIDDEN int vsgx_deliver_to_program(int sig, siginfo_t *info, ucontext_t *uc);
VSGX_HIDDEN void vsgx_block_nothing_of_ours(sigset_t *set);
/* 1 once the fixup of vsgx_guarded_copy is in place (signals.c) */
VSGX_HIDDEN int vsgx_guarded_copy_ready(void);
/* entry_asm.S: a copy that returns -EFAULT instead of faulting */
VSGX_HIDDEN int vsgx_guarded_copy(void *to, const void *from, size_t length);
extern VSGX_HIDDEN const char vsgx_guarded_copy_at[], vsgx_guarded_copy_fixup[];

/* Registers <-> ucontext */
VSGX_HIDDEN void vsgx_regs_from_ucontext(const ucontext_t *uc, uint64_t *regs);
VSGX_HIDDEN void vsgx_regs_to_ucontext(const uint64_t *regs, ucontext_t *uc);
VSGX_HIDDEN uint64_t vsgx_rdfsbase(void);
VSGX_HIDDEN uint64_t vsgx_rdgsbase(void);

#endif
