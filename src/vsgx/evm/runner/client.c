/* The client's half of the native fast path (runner.c has the other):
   EENTER through a runner's CLIENT area, with no EVM in the loop, and the
   untrusted pages the enclave touches served from the client's own memory
   through the client's slots of the page pool.

   Two builds share this file:
   - inside the library `vsgx exec` injects (VSGX_CLIENT_OWN_MEMORY): the
     pages are the program's own, read and written with vsgx_read_own /
     vsgx_write_own, which fail instead of faulting;
   - as libvsgx-client.so for the Python host and the EVM (ctypes): the
     pages are Python buffers the caller names (VSGX_FAST_NEED_PAGE asks
     for one), and the EVM's atomics (a doorbell, a version bump that is a
     full fence).

   Everything read from the CLIENT area is untrusted (enclave code can
   write it): it is read once, checked, and only ever selects among this
   client's own slots and pages. The per-entry consistency model is the
   README's: kept pages are refreshed before each entry and what the
   enclave changed is written back after it, as byte ranges, so that the
   program's own writes to the rest of a page survive. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vsgx_layout.h"
#include "vsgx_fast_client.h"

#ifdef VSGX_CLIENT_OWN_MEMORY
#include "vsgx_exec.h"
#define CLIENT_API VSGX_HIDDEN
#else
#define CLIENT_API __attribute__((visibility("default")))
#endif

#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define PAGE_BYTES 4096ul

/* Waiting: spin for a while (the runner usually answers within a few
   microseconds, and a futex wake-up costs an IPI), then sleep. The budget
   follows what answers took lately; it drops to the minimum when this
   thread was descheduled while it spun (another task wanted the CPU, the
   peer may be waiting for it) and stays there for a while. */
#define SPIN_MIN_NS 20000ull
#define SPIN_YIELD_AFTER_NS 12000ull
#define SPIN_START_NS 30000ull
#define SPIN_MAX_NS 200000ull
#define DESCHEDULED_NS 40000ull  /* a gap this long between two looks */
#define COOLDOWN_WAITS 64
#define DEAD_AFTER_TICKS 3       /* futex timeouts (1 s) without a heartbeat */

static long raw_syscall(long n, long a, long b, long c, long d, long e, long f)
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

/* This CPU's number + 1 (0 where there is no RDPID): the same-CPU hint. */
static uint32_t this_cpu(void)
{
    static int rdpid = -1;
    if (rdpid < 0) {
        uint32_t eax = 7, ebx, ecx = 0, edx;
        __asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
        rdpid = (ecx >> 22) & 1;
    }
    if (!rdpid)
        return 0;
    uint64_t id;
    __asm__ volatile("rdpid %0" : "=r"(id));
    return (uint32_t)(id & 0xfff) + 1;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* -- atomics the EVM uses from Python ----------------------------------- */

/* Add to a shared word and return the new value: a locked instruction, so
   a full fence too (the EVM bumps the version, then looks at who is
   inside; the runner the other way round). */
CLIENT_API uint64_t vsgx_atomic_add64(uint64_t *word, uint64_t value)
{
    return __atomic_add_fetch(word, value, __ATOMIC_SEQ_CST);
}

CLIENT_API uint32_t vsgx_atomic_add32(uint32_t *word, uint32_t value)
{
    return __atomic_add_fetch(word, value, __ATOMIC_SEQ_CST);
}

CLIENT_API void vsgx_store32(uint32_t *word, uint32_t value)
{
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

CLIENT_API uint32_t vsgx_load32(const uint32_t *word)
{
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}

/* Ring a runner's doorbell (the EVM after a command, the client after a
   request); wake it if it sleeps. */
CLIENT_API void vsgx_ring(struct vsgx_client *area)
{
    __atomic_add_fetch(&area->doorbell, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&area->runner_sleeping, __ATOMIC_SEQ_CST))
        raw_syscall(SYS_futex, (long)&area->doorbell, FUTEX_WAKE, 1, 0, 0, 0);
}

/* Wake a client that waits for a reply (the EVM, when it closes a runner). */
CLIENT_API void vsgx_wake_client(struct vsgx_client *area)
{
    __atomic_add_fetch(&area->reply_seq, 1, __ATOMIC_SEQ_CST);
    raw_syscall(SYS_futex, (long)&area->reply_seq, FUTEX_WAKE, 1 << 30, 0, 0, 0);
}

/* -- the client ----------------------------------------------------------- */

CLIENT_API size_t vsgx_fast_client_size(void)
{
    return sizeof(struct vsgx_fast_client);
}

/* ``pool`` is the client's range of the page pool (VSGX_CLIENT_SLOTS pages
   from slot VSGX_PYTHON_SLOTS); ``snapshots`` as many private pages. */
CLIENT_API int vsgx_fast_init(struct vsgx_fast_client *c, void *area, void *pool,
                              void *snapshots, uint64_t base, uint64_t size, uint32_t keep)
{
    memset(c, 0, sizeof(*c));
    c->area = area;
    c->pool = pool;
    c->snapshots = snapshots;
    c->base = base;
    c->size = size;
    c->keep = keep > VSGX_CLIENT_SLOTS ? VSGX_CLIENT_SLOTS : keep;
    c->spin_ns = SPIN_START_NS;
    if (c->area->magic != VSGX_CLIENT_MAGIC)
        return -EINVAL;
    /* A client before this one may have left slots mapped: this one holds
       none, so the runner unmaps them all before the next entry. */
    memset((void *)c->area->slot_pages, 0, sizeof(c->area->slot_pages));
    __atomic_store_n(&c->area->slots_dropped, 1, __ATOMIC_RELEASE);
    c->seen_reply = __atomic_load_n(&c->area->reply_seq, __ATOMIC_ACQUIRE);
    return 0;
}

static uint8_t *slot_data(struct vsgx_fast_client *c, uint32_t slot)
{
    return c->pool + (size_t)slot * PAGE_BYTES;
}

static uint8_t *slot_snapshot(struct vsgx_fast_client *c, uint32_t slot)
{
    return c->snapshots + (size_t)slot * PAGE_BYTES;
}

static void drop_slot(struct vsgx_fast_client *c, uint32_t slot)
{
    struct vsgx_fast_slot *s = &c->slots[slot];
    if (!s->page)
        return;
    s->page = 0;
    s->source = 0;
    /* the runner unmaps it before its next entry (reconcile_slots) */
    c->area->slot_pages[slot] = 0;
    __atomic_store_n(&c->area->slots_dropped, 1, __ATOMIC_RELEASE);
}

/* The program's bytes of a page into ``out`` (0, or -EFAULT if it is
   gone). */
static int read_source(struct vsgx_fast_slot *s, uint8_t *out)
{
#ifdef VSGX_CLIENT_OWN_MEMORY
    return vsgx_read_own(s->page, out, PAGE_BYTES);
#else
    memcpy(out, (const void *)s->source, PAGE_BYTES);
    return 0;
#endif
}

static int write_source(struct vsgx_fast_slot *s, size_t offset, const uint8_t *data,
                        size_t length)
{
#ifdef VSGX_CLIENT_OWN_MEMORY
    return vsgx_write_own(s->page + offset, data, length);
#else
    memcpy((uint8_t *)s->source + offset, data, length);
    return 0;
#endif
}

/* What the enclave changed in a slot goes back to the program, range by
   range (8-byte steps), and becomes the new snapshot. */
static void write_back_slot(struct vsgx_fast_client *c, uint32_t slot)
{
    struct vsgx_fast_slot *s = &c->slots[slot];
    if (!s->page || !s->writable)
        return;
    const uint64_t *now = (const uint64_t *)slot_data(c, slot);
    uint64_t *was = (uint64_t *)slot_snapshot(c, slot);
    if (memcmp(now, was, PAGE_BYTES) == 0)
        return;
    size_t words = PAGE_BYTES / 8, i = 0;
    while (i < words) {
        if (now[i] == was[i]) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < words && now[i] != was[i])
            i++;
        /* A write to a page that became read-only meanwhile is lost (the
           enclave had it writable at entry). */
        write_source(s, start * 8, (const uint8_t *)(now + start), (i - start) * 8);
        memcpy(was + start, now + start, (i - start) * 8);
    }
    c->written_back++;
}

/* Before an entry: the kept pages as the program has them now. A page the
   program no longer has is dropped (the enclave will fault on it). */
CLIENT_API int vsgx_fast_begin(struct vsgx_fast_client *c)
{
    int expected = 0;
    if (!__atomic_compare_exchange_n(&c->busy, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                     __ATOMIC_RELAXED))
        return VSGX_FAST_BUSY;
    static __thread uint8_t fresh[PAGE_BYTES] __attribute__((aligned(64)));
    for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++) {
        struct vsgx_fast_slot *s = &c->slots[slot];
        if (!s->page)
            continue;
        if (read_source(s, fresh) < 0) {
            drop_slot(c, slot);
            continue;
        }
        if (memcmp(fresh, slot_snapshot(c, slot), PAGE_BYTES) != 0) {
            memcpy(slot_data(c, slot), fresh, PAGE_BYTES);
            memcpy(slot_snapshot(c, slot), fresh, PAGE_BYTES);
            c->refreshed++;
        }
    }
    return 0;
}

/* After an exit (however it came): write back, keep at most ``keep``
   pages mapped for the next entry (the most recently fetched). */
CLIENT_API void vsgx_fast_end(struct vsgx_fast_client *c)
{
    uint32_t used = 0;
    for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++) {
        if (!c->slots[slot].page)
            continue;
        write_back_slot(c, slot);
        used++;
    }
    while (used > c->keep) {
        uint32_t oldest = VSGX_CLIENT_SLOTS;
        for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++)
            if (c->slots[slot].page &&
                (oldest == VSGX_CLIENT_SLOTS || c->slots[slot].stamp < c->slots[oldest].stamp))
                oldest = slot;
        drop_slot(c, oldest);
        used--;
    }
    __atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE);
}

/* Forget every page (the caller's memory changed under them). */
CLIENT_API void vsgx_fast_forget(struct vsgx_fast_client *c)
{
    for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++)
        drop_slot(c, slot);
}

/* Wait until the runner replies (CLIENT.reply_seq moves on); the reply,
   or VSGX_FAST_CLOSED / VSGX_FAST_LOST. */
static int wait_reply(struct vsgx_fast_client *c)
{
    struct vsgx_client *a = c->area;
    uint32_t seen = c->seen_reply;
    uint64_t start = now_ns(), last = start, budget = c->spin_ns;
    if (c->cooldown) {
        budget = SPIN_MIN_NS;
        c->cooldown--;
    }
    int descheduled = 0;
    uint32_t seq;
    for (uint32_t i = 0;; i++) {
        seq = __atomic_load_n(&a->reply_seq, __ATOMIC_ACQUIRE);
        if (seq != seen)
            goto replied;
        __asm__ volatile("pause" ::: "memory");
        if ((i & 1) == 1) {
            uint64_t t = now_ns();
            if (t - last > DESCHEDULED_NS)
                descheduled = 1;
            last = t;
            if (t - start > budget || descheduled)
                break;
            /* let a runner that shares this CPU run rather than spin it
               out: at once when it last ran here (looked at every other
               round), past the floor of a reply otherwise */
            uint32_t cpu = this_cpu();
            if (t - start > SPIN_YIELD_AFTER_NS ||
                (cpu && __atomic_load_n(&a->runner_cpu, __ATOMIC_RELAXED) == cpu))
                raw_syscall(SYS_sched_yield, 0, 0, 0, 0, 0, 0);
        }
    }
    {
        uint32_t beat = __atomic_load_n(&a->heartbeat, __ATOMIC_RELAXED);
        int quiet_ticks = 0;
        for (;;) {
            __atomic_store_n(&a->client_sleeping, 1, __ATOMIC_SEQ_CST);
            seq = __atomic_load_n(&a->reply_seq, __ATOMIC_SEQ_CST);
            if (seq != seen)
                break;
            if (__atomic_load_n(&a->closed, __ATOMIC_ACQUIRE)) {
                __atomic_store_n(&a->client_sleeping, 0, __ATOMIC_RELAXED);
                return VSGX_FAST_CLOSED;
            }
            struct timespec second = {1, 0};
            long r = raw_syscall(SYS_futex, (long)&a->reply_seq, FUTEX_WAIT, seen,
                                 (long)&second, 0, 0);
            if (r == -ETIMEDOUT) {
                uint32_t now_beat = __atomic_load_n(&a->heartbeat, __ATOMIC_RELAXED);
                quiet_ticks = now_beat == beat ? quiet_ticks + 1 : 0;
                beat = now_beat;
                if (quiet_ticks >= DEAD_AFTER_TICKS) {
                    __atomic_store_n(&a->client_sleeping, 0, __ATOMIC_RELAXED);
                    return VSGX_FAST_LOST;
                }
            }
        }
        __atomic_store_n(&a->client_sleeping, 0, __ATOMIC_RELAXED);
        c->slept++;
    }
replied:;
    uint64_t took = now_ns() - start;
    if (descheduled) {
        c->spin_ns = SPIN_MIN_NS;
        c->cooldown = COOLDOWN_WAITS;
        c->descheduled++;
    } else if (took <= budget) {
        uint64_t want = 2 * took + SPIN_MIN_NS;
        if (want > c->spin_ns)
            c->spin_ns = want < SPIN_MAX_NS ? want : SPIN_MAX_NS;
    } else {
        c->spin_ns = c->spin_ns / 2 > SPIN_MIN_NS ? c->spin_ns / 2 : SPIN_MIN_NS;
    }
    c->seen_reply = seq;
    if (__atomic_load_n(&a->closed, __ATOMIC_ACQUIRE))
        return VSGX_FAST_CLOSED;
    /* Only the runner's replies (enclave code can write the area): any
       other value, and REPLY_BAD, is a refusal, never taken for our own
       CLOSED or LOST. */
    uint32_t reply = a->reply;
    if (reply == VSGX_REPLY_EEXIT || reply == VSGX_REPLY_AEX || reply == VSGX_REPLY_PAGE ||
        reply == VSGX_REPLY_HANDED_OVER)
        return (int)reply;
    return VSGX_REPLY_REFUSED;
}

static void send_request(struct vsgx_fast_client *c, uint32_t kind)
{
    struct vsgx_client *a = c->area;
    a->client_cpu = this_cpu();
    a->request = kind;
    __atomic_add_fetch(&a->request_seq, 1, __ATOMIC_SEQ_CST);
    vsgx_ring(a);
}

/* A slot for a new page: a free one, else the oldest (written back first;
   the runner unmaps what it maps there when it maps the new page). Always
   one of the VSGX_CLIENT_SLOTS: a slot is free or holds a page. */
static uint32_t take_slot(struct vsgx_fast_client *c)
{
    uint32_t oldest = 0;
    for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++) {
        if (!c->slots[slot].page)
            return slot;
        if (c->slots[slot].stamp < c->slots[oldest].stamp)
            oldest = slot;
    }
    write_back_slot(c, oldest);
    drop_slot(c, oldest);  /* unmapped even if the new page cannot be read */
    return oldest;
}

/* Put ``page`` (the program's, or the buffer at ``source``) into a slot
   and tell the runner; MISSING tells it the program has no such page. */
static void answer_page(struct vsgx_fast_client *c, uint64_t page, uint64_t source, int state)
{
    struct vsgx_client *a = c->area;
    uint32_t slot = 0;
    if (state != VSGX_PAGE_MISSING) {
        slot = take_slot(c);
        struct vsgx_fast_slot *s = &c->slots[slot];
        s->page = page;
        s->source = source;
        s->writable = state == VSGX_PAGE_WRITABLE;
        s->stamp = ++c->clock;
        if (read_source(s, slot_data(c, slot)) < 0) {
            s->page = 0;
            state = VSGX_PAGE_MISSING;
        } else {
            memcpy(slot_snapshot(c, slot), slot_data(c, slot), PAGE_BYTES);
            a->slot_pages[slot] = page;
        }
    }
    a->page_slot = slot;
    a->page_state = (uint32_t)state;
    c->pages_served++;
    send_request(c, VSGX_REQ_PAGE);
}

/* Serve the runner until the entry ends (or the caller must name a page). */
static int serve(struct vsgx_fast_client *c, struct vsgx_fast_exit *out)
{
    struct vsgx_client *a = c->area;
    for (;;) {
        int reply = wait_reply(c);
        if (reply == VSGX_REPLY_PAGE) {
            uint64_t page = a->page_address;
            c->wanted_write = a->page_write != 0;
            if (page % PAGE_BYTES || page >= (1ull << 47) ||
                (page >= c->base && page - c->base < c->size)) {
                answer_page(c, page, 0, VSGX_PAGE_MISSING);
                continue;
            }
            /* A page a slot holds already: the runner lost its mapping
               (enclave code unmapped it) or the request is made up. The same
               slot again, with what the enclave wrote there so far. */
            uint32_t held = VSGX_CLIENT_SLOTS;
            for (uint32_t slot = 0; slot < VSGX_CLIENT_SLOTS; slot++)
                if (c->slots[slot].page == page)
                    held = slot;
            if (held < VSGX_CLIENT_SLOTS) {
                a->slot_pages[held] = page;
                a->page_slot = held;
                a->page_state = c->slots[held].writable ? VSGX_PAGE_WRITABLE
                                                        : VSGX_PAGE_READ_ONLY;
                send_request(c, VSGX_REQ_PAGE);
                continue;
            }
#ifdef VSGX_CLIENT_OWN_MEMORY
            int state = vsgx_page_state(page);
            answer_page(c, page, page, state);
            continue;
#else
            c->wanted = page;
            return VSGX_FAST_NEED_PAGE;
#endif
        }
        if (reply == VSGX_REPLY_EEXIT || reply == VSGX_REPLY_AEX) {
            memcpy(out->regs, (const void *)a->regs, sizeof(out->regs));
            out->vector = a->vector;
            out->error_code = a->error_code;
            out->address = a->address;
            out->exitinfo_valid = a->exitinfo_valid;
            out->interrupt = a->interrupt;
            c->entries++;
            return reply == VSGX_REPLY_EEXIT ? VSGX_FAST_EEXIT : VSGX_FAST_AEX;
        }
        if (reply == VSGX_REPLY_HANDED_OVER)
            return VSGX_FAST_HANDED_OVER;
        if (reply == VSGX_FAST_CLOSED || reply == VSGX_FAST_LOST)
            return reply;
        return VSGX_FAST_REFUSED;
    }
}

/* EENTER (``request`` VSGX_REQ_EENTER) with the registers at the ENCLU;
   between vsgx_fast_begin and vsgx_fast_end. */
CLIENT_API int vsgx_fast_enter(struct vsgx_fast_client *c, uint32_t request,
                               const uint64_t *regs, uint64_t return_rip,
                               struct vsgx_fast_exit *out)
{
    struct vsgx_client *a = c->area;
    if (__atomic_load_n(&a->closed, __ATOMIC_ACQUIRE))
        return VSGX_FAST_CLOSED;
    memcpy((void *)a->regs, regs, sizeof(a->regs));
    a->return_rip = return_rip;
    c->seen_reply = __atomic_load_n(&a->reply_seq, __ATOMIC_ACQUIRE);
    send_request(c, request);
    return serve(c, out);
}

/* vsgx_fast_begin and vsgx_fast_enter in one call (the Python host's
   common case, one foreign call instead of three): VSGX_FAST_BUSY if
   another entry holds the client (nothing begun, *ended 0); after
   VSGX_FAST_EEXIT the client is ended too and *ended is 1; any other result
   leaves it begun (*ended 2), for vsgx_fast_page or an entry through the
   EVM, then vsgx_fast_end. *ended is the caller's to read even when it
   could not see the result (an exception as the call returned). */
static int vsgx_fast_call(struct vsgx_fast_client *c, uint32_t request,
                          const uint64_t *regs, uint64_t return_rip,
                          struct vsgx_fast_exit *out, uint32_t *ended)
{
    *ended = 0;
    if (vsgx_fast_begin(c) != 0)
        return VSGX_FAST_BUSY;
    *ended = 2;
    int code = vsgx_fast_enter(c, request, regs, return_rip, out);
    if (code == VSGX_FAST_EEXIT) {
        vsgx_fast_end(c);
        *ended = 1;
    }
    return code;
}

/* vsgx_fast_call with its operands in one block (``ended`` there). */
CLIENT_API int vsgx_fast_call_packed(struct vsgx_fast_call *call)
{
    return vsgx_fast_call(call->client, call->request, call->regs, call->return_rip,
                          &call->out, &call->ended);
}

/* After VSGX_FAST_NEED_PAGE: the page the runner wants, as ``source``
   (4096 bytes this process keeps alive while the slot holds it) or 0 if
   there is none; then serving goes on. */
CLIENT_API int vsgx_fast_page(struct vsgx_fast_client *c, uint64_t source, uint32_t writable,
                              struct vsgx_fast_exit *out)
{
    answer_page(c, c->wanted, source,
                source == 0 ? VSGX_PAGE_MISSING
                            : (writable ? VSGX_PAGE_WRITABLE : VSGX_PAGE_READ_ONLY));
    return serve(c, out);
}

/* The untrusted page a slot holds now (0 if none): for the caller's
   bookkeeping of the buffers it must keep alive. */
CLIENT_API uint64_t vsgx_fast_slot_page(const struct vsgx_fast_client *c, uint32_t slot)
{
    return slot < VSGX_CLIENT_SLOTS ? c->slots[slot].page : 0;
}

/* The page VSGX_FAST_NEED_PAGE asks for. */
CLIENT_API uint64_t vsgx_fast_wanted(const struct vsgx_fast_client *c)
{
    return c->wanted;
}

/* Statistics: refreshed, written back, pages served, slept, descheduled,
   entries the runner ended (EEXIT, AEX). */
CLIENT_API void vsgx_fast_stats(const struct vsgx_fast_client *c, uint64_t *out)
{
    out[0] = c->refreshed;
    out[1] = c->written_back;
    out[2] = c->pages_served;
    out[3] = c->slept;
    out[4] = c->descheduled;
    out[5] = c->entries;
}
