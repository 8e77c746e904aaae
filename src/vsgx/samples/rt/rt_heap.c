/* A small first-fit heap over the enclave's heap region (the signer's
   HEAP_MIN entry), for the bridges' [in]/[out] copies. */
#include "rt_internal.h"
#include "vsgx_rt.h"

struct block {
    uint64_t size; /* bytes after the header; bit 0: in use */
    uint64_t pad;
};

static volatile int heap_lock;
static struct block *heap_start, *heap_end;

static void lock(void)
{
    while (__sync_lock_test_and_set(&heap_lock, 1))
        __asm__ volatile("pause");
}

static void unlock(void) { __sync_lock_release(&heap_lock); }

static void heap_init(void)
{
    uint8_t *base = (uint8_t *)vsgx_enclave_base() + g_vsgx_global_data.heap_offset;
    heap_start = (struct block *)base;
    heap_end = (struct block *)(base + g_vsgx_global_data.heap_size);
    heap_start->size = g_vsgx_global_data.heap_size - sizeof(struct block);
}

static struct block *next(struct block *b)
{
    return (struct block *)((uint8_t *)(b + 1) + (b->size & ~1ull));
}

void *malloc(size_t size)
{
    if (size == 0)
        size = 1;
    size = (size + 15) & ~15ull;
    lock();
    if (!heap_start)
        heap_init();
    for (struct block *b = heap_start; b < heap_end; b = next(b)) {
        if (b->size & 1)
            continue;
        /* Merge free neighbours. */
        for (struct block *n = next(b); n < heap_end && !(n->size & 1); n = next(b))
            b->size += sizeof(struct block) + n->size;
        if (b->size >= size) {
            if (b->size >= size + 2 * sizeof(struct block)) {
                struct block *rest = (struct block *)((uint8_t *)(b + 1) + size);
                rest->size = b->size - size - sizeof(struct block);
                b->size = size;
            }
            b->size |= 1;
            unlock();
            return b + 1;
        }
    }
    unlock();
    return 0;
}

void free(void *p)
{
    if (!p)
        return;
    lock();
    ((struct block *)p - 1)->size &= ~1ull;
    unlock();
}
