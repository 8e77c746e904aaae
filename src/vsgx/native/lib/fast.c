/* The fast path of vsgx exec: EENTER straight to the TCS's runner over the
   shared CLIENT area (runner/client.c, built in with VSGX_CLIENT_OWN_MEMORY:
   the untrusted pages are this process's own), with no launcher and no EVM
   in the loop. The EVM stays authoritative: the runner enters only under a
   grant the EVM gave after its own entry and revokes before any change, so
   whatever the fast path cannot do (no grant, TCS busy, any other stop)
   comes back as "refused" (the entry goes through the launcher) or "handed
   over" (the EVM goes on with it: CONTINUE).

   The launcher passes the two files on (FAST_ATTACH) from an EVM on this
   host that hands them out only to its Unix peer's uid. VSGX_EXEC_FAST=0
   turns the fast path off. */
/* The runner's layout first: its report has fields that <signal.h> names
   as macros (si_addr), and none of them is used here. */
#include "vsgx_layout.h"
#include "vsgx_fast_client.h"
#include "vsgx_exec.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>

/* client.c, this build's half */
VSGX_HIDDEN int vsgx_fast_init(struct vsgx_fast_client *c, void *area, void *pool,
                               void *snapshots, uint64_t base, uint64_t size, uint32_t keep);
VSGX_HIDDEN int vsgx_fast_begin(struct vsgx_fast_client *c);
VSGX_HIDDEN void vsgx_fast_end(struct vsgx_fast_client *c);
VSGX_HIDDEN void vsgx_fast_forget(struct vsgx_fast_client *c);
VSGX_HIDDEN int vsgx_fast_enter(struct vsgx_fast_client *c, uint32_t request,
                                const uint64_t *regs, uint64_t return_rip,
                                struct vsgx_fast_exit *out);

#define MAX_FAST_TCS 256
#define FAST_KEEP 16  /* untrusted pages kept mapped in the runner across entries */
#define PF_USER 0x4
#define RF (1ull << 16)
#define CANONICAL_HALF (1ull << 47)

enum { TCS_FREE, TCS_ATTACHING, TCS_READY, TCS_NONE };

struct fast_tcs {
    _Atomic int state;
    pid_t pid;
    uint64_t file, tcs;
    void *area, *pool, *snapshots;
    uint64_t maps_seen;  /* vsgx_maps_generation at the last entry */
    struct vsgx_fast_client client;
};

static struct fast_tcs table[MAX_FAST_TCS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static int enabled = -1;
static _Atomic uint64_t count_fast, count_handed_over, count_refused, count_attached;

static int fast_enabled(void)
{
    if (enabled < 0) {
        const char *text = getenv("VSGX_EXEC_FAST");
        enabled = !(text != NULL && text[0] == '0');
    }
    return enabled;
}

static int canonical(uint64_t address)
{
    return address < CANONICAL_HALF || address >= (uint64_t)0 - CANONICAL_HALF;
}

static void unmap_tcs(struct fast_tcs *t)
{
    if (t->area != NULL)
        vsgx_munmap_raw(t->area, sizeof(struct vsgx_client));
    if (t->pool != NULL)
        vsgx_munmap_raw(t->pool, (size_t)VSGX_CLIENT_SLOTS * PAGE);
    if (t->snapshots != NULL)
        vsgx_munmap_raw(t->snapshots, (size_t)VSGX_CLIENT_SLOTS * PAGE);
    t->area = t->pool = t->snapshots = NULL;
}

/* Map what the launcher passed on; 0 or -errno. The files are checked:
   the CLIENT area's size and magic, a pool large enough. */
static int map_files(struct fast_tcs *t, const int fds[2], uint64_t base, uint64_t size)
{
    struct stat client_stat, pool_stat;
    if (vsgx_syscall(SYS_fstat, fds[0], (long)&client_stat, 0, 0, 0, 0) < 0 ||
        vsgx_syscall(SYS_fstat, fds[1], (long)&pool_stat, 0, 0, 0, 0) < 0)
        return -EBADF;
    if ((uint64_t)client_stat.st_size < sizeof(struct vsgx_client) ||
        (uint64_t)pool_stat.st_size < (uint64_t)VSGX_POOL_SLOTS * PAGE)
        return -EINVAL;
    t->area = vsgx_mmap_raw(NULL, sizeof(struct vsgx_client), PROT_READ | PROT_WRITE,
                            MAP_SHARED, fds[0], 0);
    t->pool = vsgx_mmap_raw(NULL, (size_t)VSGX_CLIENT_SLOTS * PAGE, PROT_READ | PROT_WRITE,
                            MAP_SHARED, fds[1], (off_t)VSGX_PYTHON_SLOTS * PAGE);
    t->snapshots = vsgx_mmap_raw(NULL, (size_t)VSGX_CLIENT_SLOTS * PAGE,
                                 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t->area == (void *)-1)
        t->area = NULL;
    if (t->pool == (void *)-1)
        t->pool = NULL;
    if (t->snapshots == (void *)-1)
        t->snapshots = NULL;
    if (t->area == NULL || t->pool == NULL || t->snapshots == NULL)
        return -ENOMEM;
    /* A child of this process has no entry of its own in flight here. */
    vsgx_syscall(SYS_madvise, (long)t->area, sizeof(struct vsgx_client), MADV_DONTFORK, 0, 0, 0);
    vsgx_syscall(SYS_madvise, (long)t->pool, (long)VSGX_CLIENT_SLOTS * PAGE, MADV_DONTFORK, 0,
                 0, 0);
    vsgx_syscall(SYS_madvise, (long)t->snapshots, (long)VSGX_CLIENT_SLOTS * PAGE,
                 MADV_DONTFORK, 0, 0, 0);
    if (vsgx_fast_init(&t->client, t->area, t->pool, t->snapshots, base, size, FAST_KEEP) < 0)
        return -EINVAL;
    return 0;
}

/* Ask the launcher for the TCS's files: 0, or -errno (no fast path). */
static int attach(struct fast_tcs *t, uint64_t base, uint64_t size)
{
    struct vsgx_msg_fast_attach request = {0};
    request.type = VSGX_MSG_FAST_ATTACH;
    request.file = t->file;
    request.tcs = t->tcs;
    struct vsgx_reply reply;
    int fds[2] = {-1, -1};
    int count = 0;
    int ret = vsgx_call_fds(&request, sizeof(request), &reply, fds, 2, &count);
    if (ret == 0) {
        const struct vsgx_msg_fast_files *files = (const void *)reply.data;
        if (reply.length < sizeof(*files) || files->type != VSGX_MSG_FAST_FILES)
            ret = -EPROTO;
        else if (files->status < 0)
            ret = files->status;
        else if (count != 2)
            ret = -EPROTO;
    }
    if (ret == 0)
        ret = map_files(t, fds, base, size);
    for (int i = 0; i < count; i++)
        vsgx_close_raw(fds[i]);
    if (ret < 0)
        unmap_tcs(t);
    if (vsgx_debug)
        vsgx_log("fast path for TCS %#lx: %s", (unsigned long)t->tcs,
                 ret == 0 ? "attached" : strerror(-ret));
    return ret;
}

/* This process's client of (file, tcs), attached on first use; NULL where
   there is no fast path. */
static struct fast_tcs *client_of(uint64_t file, uint64_t tcs)
{
    for (int i = 0; i < MAX_FAST_TCS; i++) {
        struct fast_tcs *t = &table[i];
        int state = __atomic_load_n(&t->state, __ATOMIC_ACQUIRE);
        if (state == TCS_FREE)
            break;
        if (t->file == file && t->tcs == tcs && t->pid == vsgx_pid)
            return state == TCS_READY ? t : NULL;
    }
    uint64_t base = 0, size = 0;
    if (vsgx_enclave_range(file, &base, &size) < 0)
        return NULL;
    pthread_mutex_lock(&table_lock);
    struct fast_tcs *t = NULL;
    for (int i = 0; i < MAX_FAST_TCS; i++) {
        struct fast_tcs *slot = &table[i];
        int state = __atomic_load_n(&slot->state, __ATOMIC_ACQUIRE);
        if (state != TCS_FREE && slot->file == file && slot->tcs == tcs &&
            slot->pid == vsgx_pid) {
            pthread_mutex_unlock(&table_lock);
            return state == TCS_READY ? slot : NULL;
        }
        if (state == TCS_FREE) {
            t = slot;
            break;
        }
    }
    if (t == NULL) {
        pthread_mutex_unlock(&table_lock);
        return NULL;
    }
    t->file = file;
    t->tcs = tcs;
    t->pid = vsgx_pid;
    __atomic_store_n(&t->state, TCS_ATTACHING, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&table_lock);
    int ok = attach(t, base, size) == 0;
    if (ok)
        count_attached++;
    __atomic_store_n(&t->state, ok ? TCS_READY : TCS_NONE, __ATOMIC_RELEASE);
    return ok ? t : NULL;
}

/* The runner of a TCS went (closed, lost): no fast path for it from now on
   (the EVM's fresh runner has files of its own; this client stays out). */
static void give_up(struct fast_tcs *t)
{
    vsgx_fast_forget(&t->client);
    vsgx_fast_end(&t->client);
    __atomic_store_n(&t->state, TCS_NONE, __ATOMIC_RELEASE);
}

void vsgx_fast_release_file(uint64_t file)
{
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < MAX_FAST_TCS; i++) {
        struct fast_tcs *t = &table[i];
        if (__atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == TCS_READY && t->file == file &&
            t->pid == vsgx_pid && vsgx_fast_begin(&t->client) == 0) {
            /* Its entries are over; the slot stays taken (ids are not reused). */
            __atomic_store_n(&t->state, TCS_NONE, __ATOMIC_RELEASE);
            unmap_tcs(t);
        }
    }
    pthread_mutex_unlock(&table_lock);
}

void vsgx_fast_after_fork(void)
{
    /* The mappings did not come along (MADV_DONTFORK): the child attaches
       anew, with its own pid. */
    for (int i = 0; i < MAX_FAST_TCS; i++)
        if (__atomic_load_n(&table[i].state, __ATOMIC_ACQUIRE) != TCS_FREE)
            table[i].pid = 0;
    pthread_mutex_init(&table_lock, NULL);
}

/* EEXIT as the SDM defines it, whatever the CLIENT area says (enclave code
   can write it): RIP = RBX, RCX = the AEP, FS and GS as at the EENTER. */
static int harden_eexit(const uint64_t *at_enclu, struct vsgx_fast_exit *out, uint64_t *regs)
{
    memcpy(regs, out->regs, sizeof(out->regs));
    regs[R_RIP] = regs[R_RBX];
    regs[R_RCX] = at_enclu[R_RCX];
    regs[R_FSBASE] = at_enclu[R_FSBASE];
    regs[R_GSBASE] = at_enclu[R_GSBASE];
    regs[R_RFLAGS] = (regs[R_RFLAGS] & ~RF) | 0x2;
    return canonical(regs[R_RIP]);
}

/* The entry through the launcher, from the EVM that goes on with the
   handed-over entry: the EXIT as vsgx_enter reads it. */
static int continue_entry(struct fast_tcs *t, const uint64_t *at_enclu, uint64_t *regs,
                          struct vsgx_entry_result *result)
{
    struct vsgx_msg_continue request = {0};
    request.type = VSGX_MSG_CONTINUE;
    request.file = t->file;
    request.tcs = t->tcs;
    request.aep = at_enclu[R_RCX];
    request.fsbase = at_enclu[R_FSBASE];
    request.gsbase = at_enclu[R_GSBASE];
    struct vsgx_reply reply;
    int ret = vsgx_call(&request, sizeof(request), NULL, 0, &reply);
    return vsgx_entry_from_reply(ret, &reply, regs, result);
}

int vsgx_fast_enter_or_begin(uint32_t leaf, uint64_t file, uint64_t *regs, uint64_t return_rip,
                             struct vsgx_entry_result *result, void **begun)
{
    *begun = NULL;
    if (!fast_enabled() || (leaf != ENCLU_EENTER && leaf != ENCLU_ERESUME))
        return 0;
    struct fast_tcs *t = client_of(file, regs[R_RBX]);
    if (t == NULL)
        return 0;
    /* Any entry of the TCS, even one through the launcher, runs between
       begin and end: the pages the runner keeps are this client's. BUSY:
       another thread's entry of the TCS is in flight, so the TCS is busy:
       #GP(0), as on hardware (through the launcher the entry would run on
       the slots the other one is writing back). */
    if (vsgx_fast_begin(&t->client) != 0) {
        memset(result, 0, sizeof(*result));
        result->kind = VSGX_EXIT_FAULT;
        result->vector = 13;
        return 1;
    }
    *begun = t;
    /* A page kept since the program changed its mappings may be gone or
       have other rights: the kept pages go, and come back as the enclave
       touches them, with the rights they have now. */
    uint64_t generation = vsgx_maps_generation();
    if (generation != t->maps_seen) {
        vsgx_fast_forget(&t->client);
        t->maps_seen = generation;
    }
    if (leaf != ENCLU_EENTER)
        return 0;  /* ERESUME goes through the EVM */
    uint64_t at_enclu[R_COUNT];
    memcpy(at_enclu, regs, sizeof(at_enclu));
    struct vsgx_fast_exit out;
    int code = vsgx_fast_enter(&t->client, VSGX_REQ_EENTER, regs, return_rip, &out);
    switch (code) {
    case VSGX_FAST_EEXIT:
        memset(result, 0, sizeof(*result));
        if (!harden_eexit(at_enclu, &out, regs)) {
            vsgx_log("the runner of TCS %#lx reported an EEXIT to a non-canonical %#lx",
                     (unsigned long)t->tcs, (unsigned long)regs[R_RIP]);
            memcpy(regs, at_enclu, sizeof(at_enclu));
            result->kind = VSGX_EXIT_LOST;
            result->status = -EIO;
        } else {
            result->kind = VSGX_EXIT_EEXIT;
            count_fast++;
        }
        return 1;
    case VSGX_FAST_HANDED_OVER:
        count_handed_over++;
        continue_entry(t, at_enclu, regs, result);
        return 1;
    case VSGX_FAST_CLOSED:
    case VSGX_FAST_LOST:
        give_up(t);
        *begun = NULL;
        return 0;
    default:  /* refused: the launcher makes the entry, the EVM checks it */
        count_refused++;
        return 0;
    }
}

void vsgx_fast_done(void *begun)
{
    if (begun != NULL)
        vsgx_fast_end(&((struct fast_tcs *)begun)->client);
}

/* VSGX_EXEC_FAST_STATS=1: what the fast path did, on stderr at exit. */
__attribute__((destructor)) static void report_stats(void)
{
    const char *text = getenv("VSGX_EXEC_FAST_STATS");
    if (text == NULL || text[0] != '1')
        return;
    /* The clients' own counts: pages served to the runner, refreshed before
       an entry, written back after one; waits that slept or were cut short
       because this thread was descheduled. */
    uint64_t served = 0, refreshed = 0, written = 0, slept = 0, descheduled = 0;
    for (int i = 0; i < MAX_FAST_TCS; i++) {
        struct fast_tcs *t = &table[i];
        if (__atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == TCS_FREE)
            break;
        served += t->client.pages_served;
        refreshed += t->client.refreshed;
        written += t->client.written_back;
        slept += t->client.slept;
        descheduled += t->client.descheduled;
    }
    char line[256];
    int n = snprintf(line, sizeof(line),
                     "vsgx exec: pid %d: fast path: %lu entries, %lu handed over, %lu refused, "
                     "%lu TCS attached; pages %lu served, %lu refreshed, %lu written back; "
                     "waits %lu slept, %lu descheduled\n", (int)vsgx_pid,
                     (unsigned long)count_fast, (unsigned long)count_handed_over,
                     (unsigned long)count_refused, (unsigned long)count_attached,
                     (unsigned long)served, (unsigned long)refreshed, (unsigned long)written,
                     (unsigned long)slept, (unsigned long)descheduled);
    if (n > 0 && n < (int)sizeof(line))
        vsgx_syscall(SYS_write, 2, (long)line, n, 0, 0, 0);
}
