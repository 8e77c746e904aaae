/* Process state of the injected library: initialisation (lazy: Intel's urts
   calls getauxval() from a constructor that runs before ours), raw system
   calls, fork, and logging. */
#include "vsgx_exec.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

VSGX_HIDDEN pid_t vsgx_pid;
VSGX_HIDDEN int vsgx_debug;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static volatile int initialising;

long vsgx_syscall(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

void *vsgx_mmap_raw(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    long ret = vsgx_syscall(SYS_mmap, (long)addr, (long)len, prot, flags, fd, off);
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return (void *)-1;
    }
    return (void *)ret;
}

int vsgx_munmap_raw(void *addr, size_t len)
{
    long ret = vsgx_syscall(SYS_munmap, (long)addr, (long)len, 0, 0, 0, 0);
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return 0;
}

int vsgx_mprotect_raw(void *addr, size_t len, int prot)
{
    long ret = vsgx_syscall(SYS_mprotect, (long)addr, (long)len, prot, 0, 0, 0);
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return 0;
}

int vsgx_close_raw(int fd)
{
    return (int)vsgx_syscall(SYS_close, fd, 0, 0, 0, 0, 0);
}

void *vsgx_real(const char *name)
{
    void *fn = dlsym(RTLD_NEXT, name);
    if (fn == NULL)
        vsgx_fatal("the C library has no %s", name);
    return fn;
}

static void vwrite(const char *prefix, const char *fmt, va_list ap)
{
    char line[512];
    int n = snprintf(line, sizeof(line), "%s", prefix);
    n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    vsgx_syscall(SYS_write, 2, (long)line, n, 0, 0, 0);
}

void vsgx_log(const char *fmt, ...)
{
    if (!vsgx_debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    vwrite("vsgx exec: ", fmt, ap);
    va_end(ap);
}

void vsgx_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vwrite("vsgx exec: fatal: ", fmt, ap);
    va_end(ap);
    vsgx_syscall(SYS_exit_group, 127, 0, 0, 0, 0, 0);
    __builtin_unreachable();
}

static void after_fork_child(void)
{
    vsgx_pid = (pid_t)vsgx_syscall(SYS_getpid, 0, 0, 0, 0, 0, 0);
    /* A child does not inherit enclaves (the kernel keeps them with the
       parent's file): forget ours, and our sockets, in this process. */
    vsgx_device_after_fork();
    vsgx_channel_after_fork();
    vsgx_fast_after_fork();
}

static void initialise(void)
{
    initialising = 1;
    vsgx_pid = (pid_t)vsgx_syscall(SYS_getpid, 0, 0, 0, 0, 0, 0);
    const char *debug = getenv("VSGX_EXEC_DEBUG");
    vsgx_debug = debug != NULL && debug[0] != '\0' && debug[0] != '0';
    pthread_atfork(NULL, NULL, after_fork_child);
    vsgx_cpuid_probe();
    vsgx_signals_init();
    vsgx_cpuid_init();
    initialising = 0;
}

void vsgx_init(void)
{
    if (initialising)
        return; /* re-entered from within initialisation (dlsym, getenv) */
    pthread_once(&init_once, initialise);
}

__attribute__((constructor)) static void vsgx_constructor(void)
{
    vsgx_init();
}
