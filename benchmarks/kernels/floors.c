/* The floors an entry through the fast path is compared with, measured in
   the same run as it:
     floors enclu COUNT   -- ENCLU (0f 01 d7) -> its trap -> return: SIGILL
                             where the CPU makes it #UD (AMD), SIGSEGV
                             where it makes it #GP(0) (Intel without SGX)
     floors sigtrap COUNT -- INT3 -> SIGTRAP -> return (the trap fast exits use)
     floors futex COUNT   -- a bare futex ping-pong between two processes
                             (wake the peer, sleep until it wakes us back)
     floors spin COUNT    -- a ping-pong between two processes over shared
                             memory, each spinning for the other's word
                             (yielding now and then, so that a peer on the
                             same CPU gets to run): the floor of an entry
                             with fast exits, which makes no system call
   One line per round trip: "<what> <nanoseconds>". Built by the benchmarks
   with gcc; no dependency beyond libc. */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <sched.h>
#include <ucontext.h>
#include <unistd.h>

#define WARMUP 100

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void skip_enclu(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    ((ucontext_t *)context)->uc_mcontext.gregs[REG_RIP] += 3;
}

static int enclu(long count)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = skip_enclu;
    action.sa_flags = SA_SIGINFO;
    if (sigaction(SIGILL, &action, NULL) != 0 || sigaction(SIGSEGV, &action, NULL) != 0)
        return 1;
    for (long i = 0; i < count + WARMUP; i++) {
        uint64_t start = now_ns();
        __asm__ volatile(".byte 0x0f, 0x01, 0xd7" ::"a"(0) : "memory");
        uint64_t end = now_ns();
        if (i >= WARMUP)
            printf("enclu %lu\n", (unsigned long)(end - start));
    }
    return 0;
}

static void ignore_trap(int sig, siginfo_t *info, void *context)
{
    (void)sig;
    (void)info;
    (void)context; /* INT3 is a trap: RIP is already past it */
}

static int sigtrap(long count)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = ignore_trap;
    action.sa_flags = SA_SIGINFO;
    if (sigaction(SIGTRAP, &action, NULL) != 0)
        return 1;
    for (long i = 0; i < count + WARMUP; i++) {
        uint64_t start = now_ns();
        __asm__ volatile("int3" ::: "memory");
        uint64_t end = now_ns();
        if (i >= WARMUP)
            printf("sigtrap %lu\n", (unsigned long)(end - start));
    }
    return 0;
}

static void futex_wait(uint32_t *word, uint32_t seen)
{
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == seen)
        syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0);
}

static void futex_post(uint32_t *word)
{
    __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void spin_wait(uint32_t *word, uint32_t seen)
{
    for (unsigned i = 1; __atomic_load_n(word, __ATOMIC_ACQUIRE) == seen; i++) {
        __asm__ volatile("pause" ::: "memory");
        if ((i & 255) == 0)
            sched_yield();
    }
}

static void spin_post(uint32_t *word)
{
    __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
}

/* Round trips between this process and a child over two shared words. */
static int ping_pong(long count, const char *what, void (*wait)(uint32_t *, uint32_t),
                     void (*post)(uint32_t *))
{
    uint32_t *words = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (words == MAP_FAILED)
        return 1;
    uint32_t *ping = &words[0], *pong = &words[16];
    long total = count + WARMUP;
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        for (long i = 0; i < total; i++) {
            wait(ping, (uint32_t)i);
            post(pong);
        }
        _exit(0);
    }
    for (long i = 0; i < total; i++) {
        uint64_t start = now_ns();
        post(ping);
        wait(pong, (uint32_t)i);
        uint64_t end = now_ns();
        if (i >= WARMUP)
            printf("%s %lu\n", what, (unsigned long)(end - start));
    }
    int status;
    waitpid(child, &status, 0);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    long count = atol(argv[2]);
    if (!strcmp(argv[1], "enclu"))
        return enclu(count);
    if (!strcmp(argv[1], "sigtrap"))
        return sigtrap(count);
    if (!strcmp(argv[1], "futex"))
        return ping_pong(count, "futex", futex_wait, futex_post);
    if (!strcmp(argv[1], "spin"))
        return ping_pong(count, "spin", spin_wait, spin_post);
    return 2;
}
