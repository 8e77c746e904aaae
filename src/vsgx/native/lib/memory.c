/* The program's untrusted memory, served to the EVM (the README's per-entry
   model): the thread that waits for an entry's exit copies pages out of its
   own address space on request and applies the enclave's write-backs, so no
   ptrace rights are needed: a guarded copy (a fault comes back as -EFAULT),
   or before the signal handlers are in, process_vm_readv/writev. Unmapped or unreadable pages are MISSING (the
   enclave then takes a #PF, as on hardware); writability comes from
   /proc/self/maps, re-read when a page is not in the cached copy. */
#include "vsgx_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_AREAS 8192

struct area {
    uint64_t start, end;
    int prot;
};

static struct area areas[MAX_AREAS];
static int area_count;
static int maps_valid;
static pthread_mutex_t maps_lock = PTHREAD_MUTEX_INITIALIZER;
static int vm_syscalls_work = 1;

static long self_vm(int write, uint64_t address, void *local, size_t length)
{
    struct iovec here = {local, length};
    struct iovec there = {(void *)address, length};
    return vsgx_syscall(write ? SYS_process_vm_writev : SYS_process_vm_readv, vsgx_pid,
                        (long)&here, 1, (long)&there, 1, 0);
}

/* Where process_vm_readv/writev are filtered (some container profiles), a
   pipe does the same: the kernel's copy fails with EFAULT instead of a
   signal. */
static int pipe_copy(const void *from, void *to, size_t length)
{
    int fds[2];
    if (vsgx_syscall(SYS_pipe2, (long)fds, O_CLOEXEC, 0, 0, 0, 0) < 0)
        return -EFAULT;
    int ret = 0;
    while (length > 0 && ret == 0) {
        size_t chunk = length < PAGE ? length : PAGE;
        long n = vsgx_syscall(SYS_write, fds[1], (long)from, (long)chunk, 0, 0, 0);
        if (n != (long)chunk) {
            ret = -EFAULT;
            break;
        }
        n = vsgx_syscall(SYS_read, fds[0], (long)to, (long)chunk, 0, 0, 0);
        if (n != (long)chunk)
            ret = -EFAULT;
        from = (const uint8_t *)from + chunk;
        to = (uint8_t *)to + chunk;
        length -= chunk;
    }
    vsgx_close_raw(fds[0]);
    vsgx_close_raw(fds[1]);
    return ret;
}

int vsgx_read_own(uint64_t address, void *out, size_t length)
{
    if (length == 0)
        return 0;
    if (vsgx_guarded_copy_ready())
        return vsgx_guarded_copy(out, (const void *)address, length);
    if (vm_syscalls_work) {
        long n = self_vm(0, address, out, length);
        if (n == (long)length)
            return 0;
        if (n != -ENOSYS && n != -EPERM)
            return -EFAULT;
        vm_syscalls_work = 0;
    }
    return pipe_copy((const void *)address, out, length);
}

int vsgx_write_own(uint64_t address, const void *data, size_t length)
{
    if (length == 0)
        return 0;
    if (vsgx_guarded_copy_ready())
        return vsgx_guarded_copy((void *)address, data, length);
    if (vm_syscalls_work) {
        long n = self_vm(1, address, (void *)data, length);
        if (n == (long)length)
            return 0;
        if (n != -ENOSYS && n != -EPERM)
            return -EFAULT;
        vm_syscalls_work = 0;
    }
    return pipe_copy(data, (void *)address, length);
}

static uint64_t parse_hex(const char **p)
{
    uint64_t value = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9')
            value = value * 16 + (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            value = value * 16 + (uint64_t)(c - 'a' + 10);
        else
            return value;
    }
}

static void read_maps(void)
{
    static char text[1 << 20];
    int fd = (int)vsgx_syscall(SYS_openat, AT_FDCWD, (long)"/proc/self/maps",
                               O_RDONLY | O_CLOEXEC, 0, 0, 0);
    area_count = 0;
    if (fd < 0)
        return;
    size_t used = 0;
    for (;;) {
        long n = vsgx_syscall(SYS_read, fd, (long)(text + used), (long)(sizeof(text) - 1 - used),
                              0, 0, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
        if (used >= sizeof(text) - 1)
            break;
    }
    vsgx_close_raw(fd);
    text[used] = '\0';
    const char *p = text;
    while (*p && area_count < MAX_AREAS) {
        struct area a;
        a.start = parse_hex(&p);
        if (*p != '-')
            break;
        p++;
        a.end = parse_hex(&p);
        if (*p == ' ')
            p++;
        a.prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
                 (p[2] == 'x' ? PROT_EXEC : 0);
        areas[area_count++] = a;
        while (*p && *p != '\n')
            p++;
        if (*p == '\n')
            p++;
    }
    maps_valid = 1;
}

static int lookup(uint64_t page)
{
    int lo = 0, hi = area_count - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (page < areas[mid].start)
            hi = mid - 1;
        else if (page >= areas[mid].end)
            lo = mid + 1;
        else
            return areas[mid].prot;
    }
    return -1;
}

/* Moves on with every mapping change the library sees (its mmap, munmap,
   mprotect): the fast path's kept pages are looked at afresh after one. */
static _Atomic uint64_t maps_generation;

void vsgx_maps_invalidate(void)
{
    maps_valid = 0;
    atomic_fetch_add(&maps_generation, 1);
}

uint64_t vsgx_maps_generation(void)
{
    return atomic_load(&maps_generation);
}

int vsgx_page_state(uint64_t page)
{
    pthread_mutex_lock(&maps_lock);
    if (!maps_valid)
        read_maps();
    int prot = lookup(page);
    if (prot < 0) {
        read_maps();  /* the cached copy may be stale: look again */
        prot = lookup(page);
    }
    pthread_mutex_unlock(&maps_lock);
    if (prot < 0 || !(prot & PROT_READ))
        return VSGX_PAGE_MISSING;
    return (prot & PROT_WRITE) ? VSGX_PAGE_WRITABLE : VSGX_PAGE_READ_ONLY;
}

static int send_iov(int fd, struct iovec *iov, int count)
{
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)count;
    long n;
    do
        n = vsgx_syscall(SYS_sendmsg, fd, (long)&msg, MSG_NOSIGNAL, 0, 0, 0);
    while (n == -EINTR);
    return n < 0 ? -1 : 0;
}

static int serve_fetch(int fd, const struct vsgx_msg_page_fetch *request)
{
    static __thread uint8_t page[PAGE];
    struct vsgx_msg_page reply = {0};
    reply.type = VSGX_MSG_PAGE;
    reply.address = request->address;
    reply.state = VSGX_PAGE_MISSING;
    if (request->address % PAGE == 0) {
        int state = vsgx_page_state(request->address);
        if (state != VSGX_PAGE_MISSING && vsgx_read_own(request->address, page, PAGE) == 0)
            reply.state = (uint32_t)state;
    }
    struct iovec iov[2] = {{&reply, sizeof(reply)}, {page, PAGE}};
    return send_iov(fd, iov, reply.state == VSGX_PAGE_MISSING ? 1 : 2);
}

static int serve_writeback(int fd, const uint8_t *message, size_t length)
{
    const struct vsgx_msg_page_writeback *request = (const void *)message;
    struct vsgx_msg_writeback_done reply = {0};
    reply.type = VSGX_MSG_WRITEBACK_DONE;
    size_t position = sizeof(*request), end = sizeof(*request) + request->length;
    if (end > length || request->address % PAGE) {
        reply.status = -EINVAL;
        end = position;
    }
    while (position + 4 <= end) {
        uint16_t offset, run;
        memcpy(&offset, message + position, 2);
        memcpy(&run, message + position + 2, 2);
        position += 4;
        if ((uint32_t)offset + run > PAGE || position + run > end) {
            reply.status = -EINVAL;
            break;
        }
        /* A page that became read-only meanwhile: the write is lost, as the
           EVM had it writable (the enclave's view at entry). */
        if (vsgx_write_own(request->address + offset, message + position, run) < 0)
            reply.status = -EFAULT;
        position += run;
    }
    struct iovec iov = {&reply, sizeof(reply)};
    return send_iov(fd, &iov, 1);
}

int vsgx_serve_page_request(int fd, const uint8_t *message, size_t length)
{
    uint32_t type;
    memcpy(&type, message, 4);
    if (type == VSGX_MSG_PAGE_FETCH && length >= sizeof(struct vsgx_msg_page_fetch))
        return serve_fetch(fd, (const void *)message);
    if (type == VSGX_MSG_PAGE_WRITEBACK && length >= sizeof(struct vsgx_msg_page_writeback))
        return serve_writeback(fd, message, length);
    return -1;
}
