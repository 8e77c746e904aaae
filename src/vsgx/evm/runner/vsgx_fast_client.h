/* The client's half of the fast path (client.c): its state and results.
   Needs vsgx_layout.h (generated from vsgx.evm.runner.layout). */
#ifndef VSGX_FAST_CLIENT_H
#define VSGX_FAST_CLIENT_H
#include <stdint.h>

/* What vsgx_fast_enter and vsgx_fast_page return. */
#define VSGX_FAST_EEXIT 1
#define VSGX_FAST_AEX 2
#define VSGX_FAST_REFUSED 3      /* not entered: make the entry through the EVM */
#define VSGX_FAST_HANDED_OVER 4  /* entered; the EVM goes on with it: ask it to */
#define VSGX_FAST_NEED_PAGE 5    /* the caller names the page (vsgx_fast_page) */
#define VSGX_FAST_CLOSED 6       /* the runner was closed by the EVM */
#define VSGX_FAST_LOST 7         /* the runner stopped answering */
#define VSGX_FAST_BUSY 8         /* an entry of this TCS is in flight */

struct vsgx_fast_slot {
    uint64_t page;      /* the untrusted page it holds, 0 if free */
    uint64_t source;    /* where the program's bytes are (the page itself, or a buffer) */
    uint64_t stamp;     /* when it was filled (the oldest goes first) */
    uint32_t writable, reserved;
};

struct vsgx_fast_exit {
    uint64_t regs[VSGX_REG_COUNT];
    uint32_t vector, error_code;
    uint64_t address;
    uint32_t exitinfo_valid, interrupt;
};

/* vsgx_fast_call_packed's one operand: what vsgx_fast_call takes and gives,
   in a block the Python host keeps (one ctypes argument instead of six). */
struct vsgx_fast_call {
    struct vsgx_fast_client *client;
    uint32_t request, ended;
    uint64_t return_rip;
    uint64_t regs[VSGX_REG_COUNT];
    struct vsgx_fast_exit out;
};

struct vsgx_fast_client {
    struct vsgx_client *area;
    uint8_t *pool;       /* VSGX_CLIENT_SLOTS pages of the pool, shared with the runner */
    uint8_t *snapshots;  /* as many private pages: each slot as it was filled */
    uint64_t base, size; /* ELRANGE: never an untrusted page */
    uint32_t keep;       /* slots kept mapped across entries */
    int busy;
    uint32_t seen_reply;
    uint32_t cooldown;
    uint64_t spin_ns;
    uint64_t clock;
    uint64_t wanted;     /* VSGX_FAST_NEED_PAGE: the page */
    uint32_t wanted_write, reserved;
    /* statistics (tests, benchmarks) */
    uint64_t refreshed, written_back, pages_served, slept, descheduled, entries;
    struct vsgx_fast_slot slots[VSGX_CLIENT_SLOTS];
};

#endif
