/* Our traps beside the program's own signal handlers. SIGILL, SIGSEGV and
   SIGBUS stay ours (ENCLU outside SGX is #UD on AMD, #GP(0) or #PF on
   Intel; a faulting CPUID is #GP; a guarded copy of the program's memory
   may meet an unmapped page or a file's end): the program's sigaction() and signal() for them
   are recorded and its handler is called for every fault that is not ours.
   The program may not block them (a blocked synchronous fault kills the
   process, so a patched CPUID or an ENCLU would): masks lose them. */
#include "vsgx_exec.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The kernel's struct sigaction (rt_sigaction). */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

#define OURS(sig) ((sig) == SIGILL || (sig) == SIGSEGV || (sig) == SIGBUS)

static struct sigaction program_action[NSIG];  /* what the program asked for */
static int installed;
static pthread_mutex_t action_lock = PTHREAD_MUTEX_INITIALIZER;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static int (*real_sigprocmask)(int, const sigset_t *, sigset_t *);
static int (*real_pthread_sigmask)(int, const sigset_t *, sigset_t *);

static void trap(int sig, siginfo_t *info, void *context);

static void install(int sig)
{
    struct sigaction ours;
    memset(&ours, 0, sizeof(ours));
    ours.sa_sigaction = trap;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER | SA_RESTART;
    sigemptyset(&ours.sa_mask);
    struct sigaction previous;
    real_sigaction(sig, &ours, &previous);
    if (previous.sa_sigaction != trap)
        program_action[sig] = previous;
}

void vsgx_signals_init(void)
{
    pthread_mutex_lock(&action_lock);
    if (real_sigaction == NULL)
        real_sigaction = vsgx_real("sigaction");
    if (!installed) {
        install(SIGILL);
        install(SIGSEGV);
        install(SIGBUS);
        __atomic_store_n(&installed, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&action_lock);
}

void vsgx_block_nothing_of_ours(sigset_t *set)
{
    sigdelset(set, SIGILL);
    sigdelset(set, SIGSEGV);
    sigdelset(set, SIGBUS);
}

int vsgx_guarded_copy_ready(void)
{
    return __atomic_load_n(&installed, __ATOMIC_ACQUIRE);
}

/* Run the program's handler for sig as the kernel would have: its mask,
   SA_RESETHAND, SA_SIGINFO or not. Without one, the default action. */
int vsgx_deliver_to_program(int sig, siginfo_t *info, ucontext_t *uc)
{
    struct sigaction action;
    if (OURS(sig)) {
        pthread_mutex_lock(&action_lock);
        action = program_action[sig];
        if (action.sa_flags & SA_RESETHAND)
            program_action[sig].sa_handler = SIG_DFL;
        pthread_mutex_unlock(&action_lock);
    } else {
        real_sigaction(sig, NULL, &action);
    }
    if (action.sa_handler == SIG_DFL || action.sa_handler == SIG_IGN) {
        /* Synchronous faults are never ignored: die as the kernel kills. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        real_sigaction(sig, &dfl, NULL);
        sigset_t unblock;
        sigemptyset(&unblock);
        sigaddset(&unblock, sig);
        real_pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
        vsgx_syscall(SYS_tgkill, vsgx_pid, vsgx_syscall(SYS_gettid, 0, 0, 0, 0, 0, 0), sig, 0,
                     0, 0);
        vsgx_syscall(SYS_exit_group, 128 + sig, 0, 0, 0, 0, 0);
    }
    if (!OURS(sig) && (action.sa_flags & SA_RESETHAND)) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        real_sigaction(sig, &dfl, NULL);
    }
    sigset_t mask = action.sa_mask, saved;
    if (!(action.sa_flags & SA_NODEFER))
        sigaddset(&mask, sig);
    vsgx_block_nothing_of_ours(&mask);
    real_pthread_sigmask(SIG_BLOCK, &mask, &saved);
    if (action.sa_flags & SA_SIGINFO)
        action.sa_sigaction(sig, info, uc);
    else
        action.sa_handler(sig);
    real_pthread_sigmask(SIG_SETMASK, &saved, NULL);
    return 1;
}

static void trap(int sig, siginfo_t *info, void *context)
{
    int saved_errno = errno;
    ucontext_t *uc = context;
    int handled = 0;
    if ((sig == SIGSEGV || sig == SIGBUS) &&
        uc->uc_mcontext.gregs[REG_RIP] == (greg_t)(uintptr_t)vsgx_guarded_copy_at) {
        uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)vsgx_guarded_copy_fixup;
        return;
    }
    if (sig == SIGILL) {
        handled = vsgx_handle_cpuid_trap(uc, 0);
        if (!handled)
            handled = vsgx_handle_raw_enclu(uc);
    } else if (sig == SIGSEGV) {
        /* A faulting CPUID (#GP), or ENCLU on an Intel CPU without SGX: #GP,
           or for EENTER and ERESUME a #PF near RBX. */
        if (info->si_code == SI_KERNEL && vsgx_cpuid_faulting)
            handled = vsgx_handle_cpuid_trap(uc, 1);
        if (!handled)
            handled = vsgx_handle_raw_enclu(uc);
    }
    if (!handled)
        vsgx_deliver_to_program(sig, info, uc);
    errno = saved_errno;
}

static void clean_mask(const struct sigaction *in, struct sigaction *out)
{
    *out = *in;
    vsgx_block_nothing_of_ours(&out->sa_mask);
}

VSGX_EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
    if (real_sigaction == NULL)
        real_sigaction = vsgx_real("sigaction");
    if (sig <= 0 || sig >= NSIG || !installed || !OURS(sig)) {
        if (act == NULL)
            return real_sigaction(sig, act, old);
        struct sigaction cleaned;
        clean_mask(act, &cleaned);
        return real_sigaction(sig, &cleaned, old);
    }
    pthread_mutex_lock(&action_lock);
    if (old != NULL)
        *old = program_action[sig];
    if (act != NULL)
        clean_mask(act, &program_action[sig]);
    pthread_mutex_unlock(&action_lock);
    return 0;
}

VSGX_EXPORT int __sigaction(int sig, const struct sigaction *act, struct sigaction *old)
    __attribute__((alias("sigaction")));

VSGX_EXPORT sighandler_t signal(int sig, sighandler_t handler)
{
    struct sigaction act, old;
    memset(&act, 0, sizeof(act));
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) < 0)
        return SIG_ERR;
    return old.sa_handler;
}

VSGX_EXPORT sighandler_t bsd_signal(int sig, sighandler_t handler) __attribute__((alias("signal")));

VSGX_EXPORT sighandler_t sysv_signal(int sig, sighandler_t handler)
{
    struct sigaction act, old;
    memset(&act, 0, sizeof(act));
    act.sa_handler = handler;
    act.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) < 0)
        return SIG_ERR;
    return old.sa_handler;
}

VSGX_EXPORT sighandler_t __sysv_signal(int sig, sighandler_t handler)
    __attribute__((alias("sysv_signal")));

static int masked(int (*real)(int, const sigset_t *, sigset_t *), int how, const sigset_t *set,
                  sigset_t *old)
{
    if (set == NULL || how == SIG_UNBLOCK)
        return real(how, set, old);
    sigset_t cleaned = *set;
    vsgx_block_nothing_of_ours(&cleaned);
    return real(how, &cleaned, old);
}

VSGX_EXPORT int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
    if (real_sigprocmask == NULL)
        real_sigprocmask = vsgx_real("sigprocmask");
    return masked(real_sigprocmask, how, set, old);
}

VSGX_EXPORT int pthread_sigmask(int how, const sigset_t *set, sigset_t *old)
{
    if (real_pthread_sigmask == NULL)
        real_pthread_sigmask = vsgx_real("pthread_sigmask");
    return masked(real_pthread_sigmask, how, set, old);
}

__attribute__((constructor(101))) static void lookups(void)
{
    if (real_pthread_sigmask == NULL)
        real_pthread_sigmask = vsgx_real("pthread_sigmask");
    if (real_sigaction == NULL)
        real_sigaction = vsgx_real("sigaction");
}
