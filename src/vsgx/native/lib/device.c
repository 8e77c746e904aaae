/* The SGX device files of the in-kernel driver (/dev/sgx_enclave,
   /dev/sgx/enclave, /dev/sgx_provision, /dev/sgx/provision) as the program
   sees them (arch/x86/kernel/cpu/sgx/driver.c, ioctl.c, encl.c).

   An open is local and cheap (Intel's urts probes ~98 times per
   sgx_create_enclave): a memfd gives the program a real descriptor whose
   inode names the open file, so dup'ed descriptors are recognised. ioctls
   copy their argument and the buffers it points to (copy_from_user) and go
   to the launcher, whose vsgx.avm.uapi answers with the kernel's errno and
   the argument to copy back. The enclave outlives its descriptors while it
   is mapped (urts closes the fd, then unmaps).

   What the program sees of ELRANGE: an anonymous PROT_NONE mapping where it
   maps the enclave fd (the EPC is unreadable from outside on hardware too:
   reads there return 0xFF there, here they fault). Its protections and
   extent are tracked here and mirrored to the EVM's page tables. */
#include "vsgx_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#define SGX_IOC_ENCLAVE_CREATE 0x4008a400u
#define SGX_IOC_ENCLAVE_ADD_PAGES 0xc030a401u
#define SGX_IOC_ENCLAVE_INIT 0x4008a402u
#define SGX_IOC_ENCLAVE_PROVISION 0x4008a403u
#define SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS 0xc028a405u
#define SGX_IOC_ENCLAVE_MODIFY_TYPES 0xc028a406u
#define SGX_IOC_ENCLAVE_REMOVE_PAGES 0xc018a407u
#define IOC_SIZE(cmd) (((cmd) >> 16) & 0x3fff)

#define SECS_SIZE 4096
#define SIGSTRUCT_SIZE 1808
#define SECINFO_SIZE 64
#define FD_TABLE 65536
#define MAX_MAPPINGS 4096

enum file_kind { FILE_ENCLAVE = 1, FILE_PROVISION = 2 };

struct sgx_file {
    uint64_t id;
    int kind;
    int fds;          /* descriptors that refer to this open file */
    int mapped;       /* tracked ranges that map it */
    dev_t dev;
    ino_t ino;
    uint64_t base, size;  /* ELRANGE, once created */
    atomic_int ioctl_busy;
    struct sgx_file *next;
};

struct mapping {
    uint64_t start, end;
    int prot;
    struct sgx_file *file;
};

static struct sgx_file *fd_table[FD_TABLE];
static struct sgx_file *files;          /* every live open file */
static struct mapping mappings[MAX_MAPPINGS];
static int mapping_count;
static uint64_t next_file_id = 1;
static int any_device;                  /* has this process opened a device? */
static pthread_mutex_t device_lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_close_range)(unsigned int, unsigned int, int);
static int (*real_ioctl)(int, unsigned long, ...);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);
static int (*real_mprotect)(void *, size_t, int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_stat)(const char *, struct stat *);
static int (*real_lstat)(const char *, struct stat *);
static int (*real_fstat)(int, struct stat *);
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_access)(const char *, int);
static int (*real_faccessat)(int, const char *, int, int);

#define REAL(name) ({ if (real_##name == NULL) \
                         real_##name = (__typeof__(real_##name))vsgx_real(#name); \
                     real_##name; })

/* -- device names ------------------------------------------------------ */
static int device_kind(const char *path)
{
    if (path == NULL)
        return 0;
    if (!strcmp(path, "/dev/sgx_enclave") || !strcmp(path, "/dev/sgx/enclave"))
        return FILE_ENCLAVE;
    if (!strcmp(path, "/dev/sgx_provision") || !strcmp(path, "/dev/sgx/provision"))
        return FILE_PROVISION;
    return 0;
}

static void device_stat(int kind, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFCHR | 0666;
    st->st_rdev = makedev(10, kind == FILE_ENCLAVE ? 125 : 126);
    st->st_dev = makedev(0, 5);
    st->st_nlink = 1;
    st->st_blksize = 4096;
    st->st_ino = kind == FILE_ENCLAVE ? 1125 : 1126;
}

/* -- open files -------------------------------------------------------- */
static struct sgx_file *file_of(int fd)
{
    if (!any_device || fd < 0)
        return NULL;
    if (fd < FD_TABLE && fd_table[fd] != NULL)
        return fd_table[fd];
    /* A descriptor we did not see made (SCM_RIGHTS, fcntl variants): its
       memfd inode tells which open file it is. */
    struct stat st;
    if (vsgx_syscall(SYS_fstat, fd, (long)&st, 0, 0, 0, 0) < 0)
        return NULL;
    struct sgx_file *found = NULL;
    pthread_mutex_lock(&device_lock);
    for (struct sgx_file *f = files; f; f = f->next)
        if (f->dev == st.st_dev && f->ino == st.st_ino) {
            found = f;
            break;
        }
    pthread_mutex_unlock(&device_lock);
    return found;
}

static int open_device(int kind, int flags)
{
    int memfd_flags = (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0;
    long fd = vsgx_syscall(SYS_memfd_create,
                           (long)(kind == FILE_ENCLAVE ? "sgx_enclave" : "sgx_provision"),
                           memfd_flags, 0, 0, 0, 0);
    if (fd < 0) {
        errno = (int)-fd;
        return -1;
    }
    struct sgx_file *file = calloc(1, sizeof(*file));
    struct stat st;
    if (file == NULL || fd >= FD_TABLE || vsgx_syscall(SYS_fstat, fd, (long)&st, 0, 0, 0, 0) < 0) {
        free(file);
        vsgx_close_raw((int)fd);
        errno = ENOMEM;
        return -1;
    }
    file->kind = kind;
    file->fds = 1;
    file->dev = st.st_dev;
    file->ino = st.st_ino;
    pthread_mutex_lock(&device_lock);
    file->id = ((uint64_t)vsgx_pid << 32) | next_file_id++;
    file->next = files;
    files = file;
    fd_table[fd] = file;
    any_device = 1;
    pthread_mutex_unlock(&device_lock);
    return (int)fd;
}

static void unlink_file(struct sgx_file *file)
{
    for (struct sgx_file **p = &files; *p; p = &(*p)->next)
        if (*p == file) {
            *p = file->next;
            break;
        }
}

static int simple_request(const void *request, size_t size)
{
    struct vsgx_reply reply;
    int ret = vsgx_call(request, size, NULL, 0, &reply);
    if (ret < 0)
        return ret;
    const struct vsgx_msg_done *done = (const void *)reply.data;
    return reply.length >= sizeof(*done) ? done->status : -EIO;
}

/* Called with device_lock held: the enclave goes when nothing refers to it
   (sgx_release after the last fput: descriptors and mappings). */
static void maybe_release(struct sgx_file *file)
{
    if (file->fds > 0 || file->mapped > 0)
        return;
    unlink_file(file);
    if (file->kind == FILE_ENCLAVE && vsgx_channel_available()) {
        struct vsgx_msg_release request = {0};
        request.type = VSGX_MSG_RELEASE;
        request.file = file->id;
        simple_request(&request, sizeof(request));
    }
    free(file);
}

VSGX_EXPORT int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    int kind = device_kind(path);
    if (kind) {
        vsgx_init();
        return open_device(kind, flags);
    }
    return REAL(open)(path, flags, mode);
}

VSGX_EXPORT int open64(const char *path, int flags, ...) __attribute__((alias("open")));

VSGX_EXPORT int __open_2(const char *path, int flags)
{
    return open(path, flags);
}

VSGX_EXPORT int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

VSGX_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    int kind = path != NULL && path[0] == '/' ? device_kind(path) : 0;
    if (kind) {
        vsgx_init();
        return open_device(kind, flags);
    }
    return REAL(openat)(dirfd, path, flags, mode);
}

VSGX_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
    __attribute__((alias("openat")));

VSGX_EXPORT int __openat_2(int dirfd, const char *path, int flags)
{
    return openat(dirfd, path, flags);
}

VSGX_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
    __attribute__((alias("__openat_2")));

static void forget_fd(int fd)
{
    if (fd < 0 || fd >= FD_TABLE)
        return;
    pthread_mutex_lock(&device_lock);
    struct sgx_file *file = fd_table[fd];
    fd_table[fd] = NULL;
    if (file != NULL) {
        file->fds--;
        maybe_release(file);
    }
    pthread_mutex_unlock(&device_lock);
}

static void remember_fd(int fd, struct sgx_file *file)
{
    if (fd < 0 || fd >= FD_TABLE || file == NULL)
        return;
    pthread_mutex_lock(&device_lock);
    fd_table[fd] = file;
    file->fds++;
    pthread_mutex_unlock(&device_lock);
}

VSGX_EXPORT int close(int fd)
{
    if (vsgx_channel_is_internal_fd(fd)) {
        errno = EBADF;  /* our sockets are not the program's to close */
        return -1;
    }
    struct sgx_file *file = file_of(fd);
    int ret = REAL(close)(fd);
    if (file != NULL && ret == 0)
        forget_fd(fd);
    return ret;
}

/* Descriptor sweeps (daemons close everything at start) pass over our
   sockets. */
VSGX_EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    if (flags & CLOSE_RANGE_CLOEXEC || !vsgx_channel_available())
        return REAL(close_range)(first, last, flags);
    unsigned int from = first;
    for (unsigned int fd = first; fd <= last && fd < FD_TABLE; fd++) {
        if (vsgx_channel_is_internal_fd((int)fd)) {
            if (fd > from && REAL(close_range)(from, fd - 1, flags) < 0)
                return -1;
            from = fd + 1;
        }
        if (fd_table[fd] != NULL)
            forget_fd((int)fd);
    }
    if (from <= last)
        return REAL(close_range)(from, last, flags);
    return 0;
}

VSGX_EXPORT void closefrom(int lowfd)
{
    close_range((unsigned int)(lowfd < 0 ? 0 : lowfd), ~0U, 0);
}

VSGX_EXPORT int dup(int fd)
{
    struct sgx_file *file = file_of(fd);
    int new_fd = REAL(dup)(fd);
    if (new_fd >= 0 && file != NULL)
        remember_fd(new_fd, file);
    return new_fd;
}

static int redup(int fd, int new_fd, int flags, int three)
{
    if (vsgx_channel_is_internal_fd(fd)) {
        errno = EBADF;
        return -1;
    }
    if (vsgx_channel_is_internal_fd(new_fd)) {
        errno = EBUSY;  /* what dup2 says while the target is being set up */
        return -1;
    }
    struct sgx_file *file = file_of(fd);
    struct sgx_file *old = file_of(new_fd);
    int ret = three ? REAL(dup3)(fd, new_fd, flags) : REAL(dup2)(fd, new_fd);
    if (ret >= 0 && fd != new_fd) {
        if (old != NULL)
            forget_fd(new_fd);
        if (file != NULL)
            remember_fd(new_fd, file);
    }
    return ret;
}

VSGX_EXPORT int dup2(int fd, int new_fd)
{
    return redup(fd, new_fd, 0, 0);
}

VSGX_EXPORT int dup3(int fd, int new_fd, int flags)
{
    return redup(fd, new_fd, flags, 1);
}

VSGX_EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    int ret = REAL(fcntl)(fd, cmd, arg);
    if (ret >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
        struct sgx_file *file = file_of(fd);
        if (file != NULL)
            remember_fd(ret, file);
    }
    return ret;
}

VSGX_EXPORT int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

/* -- stat of the device nodes ------------------------------------------ */
VSGX_EXPORT int stat(const char *path, struct stat *st)
{
    int kind = device_kind(path);
    if (kind) {
        device_stat(kind, st);
        return 0;
    }
    return REAL(stat)(path, st);
}

/* struct stat64 is struct stat on x86-64. */
VSGX_EXPORT int stat64(const char *path, struct stat64 *st)
{
    return stat(path, (struct stat *)st);
}

VSGX_EXPORT int lstat(const char *path, struct stat *st)
{
    int kind = device_kind(path);
    if (kind) {
        device_stat(kind, st);
        return 0;
    }
    return REAL(lstat)(path, st);
}

VSGX_EXPORT int lstat64(const char *path, struct stat64 *st)
{
    return lstat(path, (struct stat *)st);
}

VSGX_EXPORT int fstat(int fd, struct stat *st)
{
    struct sgx_file *file = file_of(fd);
    if (file != NULL) {
        device_stat(file->kind, st);
        return 0;
    }
    return REAL(fstat)(fd, st);
}

VSGX_EXPORT int fstat64(int fd, struct stat64 *st)
{
    return fstat(fd, (struct stat *)st);
}

VSGX_EXPORT int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    int kind = path != NULL && path[0] == '/' ? device_kind(path) : 0;
    if (kind) {
        device_stat(kind, st);
        return 0;
    }
    if (path != NULL && path[0] == '\0' && (flags & AT_EMPTY_PATH))
        return fstat(dirfd, st);
    return REAL(fstatat)(dirfd, path, st, flags);
}

VSGX_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
    return fstatat(dirfd, path, (struct stat *)st, flags);
}

/* glibc before 2.33 compiled stat() calls into these. */
VSGX_EXPORT int __xstat(int ver, const char *path, struct stat *st)
{
    (void)ver;
    return stat(path, st);
}

VSGX_EXPORT int __xstat64(int ver, const char *path, struct stat *st)
    __attribute__((alias("__xstat")));

VSGX_EXPORT int __lxstat(int ver, const char *path, struct stat *st)
{
    (void)ver;
    return lstat(path, st);
}

VSGX_EXPORT int __lxstat64(int ver, const char *path, struct stat *st)
    __attribute__((alias("__lxstat")));

VSGX_EXPORT int __fxstat(int ver, int fd, struct stat *st)
{
    (void)ver;
    return fstat(fd, st);
}

VSGX_EXPORT int __fxstat64(int ver, int fd, struct stat *st) __attribute__((alias("__fxstat")));

VSGX_EXPORT int access(const char *path, int mode)
{
    if (device_kind(path))
        return 0;
    return REAL(access)(path, mode);
}

VSGX_EXPORT int faccessat(int dirfd, const char *path, int mode, int flags)
{
    if (path != NULL && path[0] == '/' && device_kind(path))
        return 0;
    return REAL(faccessat)(dirfd, path, mode, flags);
}

/* -- ioctl --------------------------------------------------------------- */
struct ioctl_call {
    struct vsgx_msg_ioctl request;
    uint8_t buffer[SECS_SIZE];
    size_t buffer_size;
};

static int send_ioctl(struct ioctl_call *call, const struct iovec *extra, int extra_count,
                      struct vsgx_msg_ioctl_done *done)
{
    struct iovec iov[2 + 2 * VSGX_ADD_PAGES_BATCH + 1];
    int n = 0;
    iov[n++] = (struct iovec){&call->request, sizeof(call->request)};
    if (call->buffer_size)
        iov[n++] = (struct iovec){call->buffer, call->buffer_size};
    for (int i = 0; i < extra_count; i++)
        iov[n++] = extra[i];
    struct vsgx_reply reply;
    int ret = vsgx_call_iov(iov, n, &reply);
    if (ret < 0)
        return ret;
    if (reply.length < sizeof(*done))
        return -EIO;
    memcpy(done, reply.data, sizeof(*done));
    return 0;
}

static long finish_ioctl(struct ioctl_call *call, const struct vsgx_msg_ioctl_done *done,
                         uint64_t arg_address, size_t arg_size)
{
    if ((done->flags & VSGX_IOCTL_COPY_BACK) &&
        vsgx_write_own(arg_address, done->arg, arg_size) < 0)
        return -EFAULT;
    (void)call;
    return done->status;
}

static long add_pages(struct ioctl_call *call, uint64_t arg_address)
{
    /* Source pages go in batches; the launcher checks the whole argument
       first and counts what is added, as sgx_ioc_enclave_add_pages does. */
    static __thread uint8_t pages[VSGX_ADD_PAGES_BATCH][PAGE];
    uint8_t zero_flags[VSGX_ADD_PAGES_BATCH];
    const uint64_t *arg = call->request.arg;  /* src offset length secinfo flags count */
    uint64_t src = arg[0], length = arg[2];
    uint64_t total = (length % PAGE == 0 && length <= (1ULL << 46)) ? length / PAGE : 0;
    uint64_t position = 0;
    struct vsgx_msg_ioctl_done done;
    for (;;) {
        uint64_t remaining = total > position ? total - position : 0;
        uint32_t batch = remaining < VSGX_ADD_PAGES_BATCH ? (uint32_t)remaining
                                                          : VSGX_ADD_PAGES_BATCH;
        uint32_t readable = 0;
        struct iovec extra[1 + VSGX_ADD_PAGES_BATCH];
        int extra_count = 0;
        if (src % PAGE == 0) {
            for (; readable < batch; readable++) {
                if (vsgx_read_own(src + (position + readable) * PAGE, pages[readable], PAGE) < 0)
                    break;
                static const uint8_t zeros[PAGE];
                zero_flags[readable] = memcmp(pages[readable], zeros, PAGE) == 0;
            }
        }
        extra[extra_count++] = (struct iovec){zero_flags, readable};
        for (uint32_t i = 0; i < readable; i++)
            if (!zero_flags[i])
                extra[extra_count++] = (struct iovec){pages[i], PAGE};
        call->request.position = position * PAGE;
        call->request.pages = batch;
        call->request.readable_pages = readable;
        int ret = send_ioctl(call, extra, extra_count, &done);
        if (ret < 0)
            return ret;
        position += batch;
        if (done.status != 0 || position >= total || done.count < position * PAGE)
            break;
    }
    return finish_ioctl(call, &done, arg_address, 48);
}

static long enclave_ioctl(struct sgx_file *file, unsigned long cmd, uint64_t arg_address)
{
    switch (cmd) {
    case SGX_IOC_ENCLAVE_CREATE:
    case SGX_IOC_ENCLAVE_ADD_PAGES:
    case SGX_IOC_ENCLAVE_INIT:
    case SGX_IOC_ENCLAVE_PROVISION:
    case SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS:
    case SGX_IOC_ENCLAVE_MODIFY_TYPES:
    case SGX_IOC_ENCLAVE_REMOVE_PAGES:
        break;
    default:
        return -ENOTTY;  /* -ENOIOCTLCMD, also SGX_IOC_VEPC_REMOVE_ALL on an enclave fd */
    }
    if (!vsgx_channel_available())
        return -ENODEV;
    int expected = 0;
    if (!atomic_compare_exchange_strong(&file->ioctl_busy, &expected, 1))
        return -EBUSY;
    static __thread struct ioctl_call call;
    memset(&call.request, 0, sizeof(call.request));
    call.buffer_size = 0;
    call.request.type = VSGX_MSG_IOCTL;
    call.request.file = file->id;
    call.request.cmd = (uint32_t)cmd;
    size_t arg_size = IOC_SIZE(cmd);
    if (vsgx_read_own(arg_address, call.request.arg, arg_size) == 0)
        call.request.flags |= VSGX_ARG_READABLE;
    long ret;
    const uint64_t *arg = call.request.arg;
    size_t want = 0;
    uint64_t where = 0;
    if (call.request.flags & VSGX_ARG_READABLE) {
        if (cmd == SGX_IOC_ENCLAVE_CREATE)
            want = SECS_SIZE, where = arg[0];
        else if (cmd == SGX_IOC_ENCLAVE_INIT)
            want = SIGSTRUCT_SIZE, where = arg[0];
        else if (cmd == SGX_IOC_ENCLAVE_ADD_PAGES)
            want = SECINFO_SIZE, where = arg[3];
        else if (cmd == SGX_IOC_ENCLAVE_PROVISION) {
            struct sgx_file *other = arg[0] <= 0x7fffffff ? file_of((int)arg[0]) : NULL;
            call.request.provision_fd = other != NULL && other->kind == FILE_PROVISION;
        }
    }
    if (want) {
        call.buffer_size = want;
        if (vsgx_read_own(where, call.buffer, want) == 0)
            call.request.flags |= VSGX_BUFFER_READABLE;
        else
            memset(call.buffer, 0, want);
    }
    if (cmd == SGX_IOC_ENCLAVE_ADD_PAGES && (call.request.flags & VSGX_ARG_READABLE)) {
        ret = add_pages(&call, arg_address);
    } else {
        struct vsgx_msg_ioctl_done done;
        ret = send_ioctl(&call, NULL, 0, &done);
        if (ret == 0)
            ret = finish_ioctl(&call, &done, arg_address, arg_size);
    }
    if (cmd == SGX_IOC_ENCLAVE_CREATE && ret == 0 && want) {
        uint64_t size, base;
        memcpy(&size, call.buffer, 8);
        memcpy(&base, call.buffer + 8, 8);
        pthread_mutex_lock(&device_lock);
        file->size = size;
        file->base = base;
        pthread_mutex_unlock(&device_lock);
        /* The program may have mapped the fd before ECREATE (Gramine does):
           tell the EVM's page tables what is mapped now. */
        for (int i = 0; i < mapping_count; i++)
            if (mappings[i].file == file) {
                struct vsgx_msg_map request = {0};
                request.type = VSGX_MSG_MAP;
                request.file = file->id;
                request.address = mappings[i].start;
                request.length = mappings[i].end - mappings[i].start;
                request.prot = (uint32_t)mappings[i].prot;
                request.flags = MAP_FIXED | MAP_SHARED;
                simple_request(&request, sizeof(request));
            }
    }
    atomic_store(&file->ioctl_busy, 0);
    return ret;
}

VSGX_EXPORT int ioctl(int fd, unsigned long cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    struct sgx_file *file = file_of(fd);
    if (file == NULL)
        return REAL(ioctl)(fd, cmd, arg);
    long ret = file->kind == FILE_ENCLAVE ? enclave_ioctl(file, cmd, (uint64_t)arg) : -ENOTTY;
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return (int)ret;
}

/* -- the enclave's mappings ---------------------------------------------- */
uint64_t vsgx_enclave_file_for_tcs(uint64_t tcs)
{
    uint64_t id = 0;
    pthread_mutex_lock(&device_lock);
    for (struct sgx_file *f = files; f; f = f->next)
        if (f->size && tcs >= f->base && tcs - f->base < f->size) {
            id = f->id;
            break;
        }
    pthread_mutex_unlock(&device_lock);
    return id;
}

static void add_mapping(uint64_t start, uint64_t end, int prot, struct sgx_file *file)
{
    if (mapping_count == MAX_MAPPINGS)
        vsgx_fatal("more than %d enclave mappings", MAX_MAPPINGS);
    mappings[mapping_count++] = (struct mapping){start, end, prot, file};
    file->mapped++;
}

/* Remove [start, end) from the tracked mappings (device_lock held); the
   EVM's page tables lose those pages. Files left unreferenced go. */
static void cut_mappings(uint64_t start, uint64_t end)
{
    struct sgx_file *touched[64];
    int touched_count = 0;
    for (int i = 0; i < mapping_count; i++) {
        struct mapping m = mappings[i];
        if (m.end <= start || m.start >= end)
            continue;
        uint64_t cut_start = m.start > start ? m.start : start;
        uint64_t cut_end = m.end < end ? m.end : end;
        if (m.file->size && vsgx_channel_available()) {
            struct vsgx_msg_unmap request = {0};
            request.type = VSGX_MSG_UNMAP;
            request.file = m.file->id;
            request.address = cut_start;
            request.length = cut_end - cut_start;
            simple_request(&request, sizeof(request));
        }
        /* Replace by what is left on either side. */
        mappings[i] = mappings[--mapping_count];
        m.file->mapped--;
        if (m.start < cut_start)
            add_mapping(m.start, cut_start, m.prot, m.file);
        if (cut_end < m.end)
            add_mapping(cut_end, m.end, m.prot, m.file);
        if (touched_count < 64)
            touched[touched_count++] = m.file;
        i = -1;  /* the array changed: look again from the start */
    }
    for (int i = 0; i < touched_count; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= touched[j] == touched[i];
        if (!seen)
            maybe_release(touched[i]);
    }
}

static int overlaps_mapping(uint64_t start, uint64_t end)
{
    for (int i = 0; i < mapping_count; i++)
        if (mappings[i].start < end && mappings[i].end > start)
            return 1;
    return 0;
}

static void *map_enclave(struct sgx_file *file, void *addr, size_t length, int prot, int flags)
{
    if ((flags & MAP_TYPE) == MAP_PRIVATE) {
        errno = EINVAL;  /* sgx_get_unmapped_area */
        return MAP_FAILED;
    }
    if (length == 0 || ((flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) && (uint64_t)addr % PAGE)) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    uint64_t size = PAGE_UP(length);
    int fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
    void *where = addr;
    if (!fixed) {
        /* Pick the address as the kernel would, with a placeholder. */
        where = vsgx_mmap_raw(addr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                              -1, 0);
        if (where == (void *)-1)
            return MAP_FAILED;
    } else if (flags & MAP_FIXED_NOREPLACE) {
        void *got = vsgx_mmap_raw(addr, size, PROT_NONE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (got == (void *)-1)
            return MAP_FAILED;
    }
    if (personality(0xffffffff) & READ_IMPLIES_EXEC) {
        if (!(flags & MAP_FIXED))
            vsgx_munmap_raw(where, size);
        errno = EACCES;
        return MAP_FAILED;
    }
    pthread_mutex_lock(&device_lock);
    int status = 0;
    if (file->size) {  /* before ECREATE nothing limits a mapping */
        struct vsgx_msg_map request = {0};
        request.type = VSGX_MSG_MAP;
        request.file = file->id;
        request.address = (uint64_t)where;
        request.length = size;
        request.prot = (uint32_t)prot;
        request.flags = (uint32_t)flags;
        status = simple_request(&request, sizeof(request));
    }
    if (status < 0) {
        pthread_mutex_unlock(&device_lock);
        if (!(flags & MAP_FIXED))
            vsgx_munmap_raw(where, size);
        errno = -status;
        return MAP_FAILED;
    }
    if (flags & MAP_FIXED) {
        /* The old mapping goes, as with any MAP_FIXED. */
        cut_mappings((uint64_t)where, (uint64_t)where + size);
        if (vsgx_mmap_raw(where, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED |
                          MAP_NORESERVE, -1, 0) == (void *)-1) {
            pthread_mutex_unlock(&device_lock);
            return MAP_FAILED;
        }
    }
    add_mapping((uint64_t)where, (uint64_t)where + size, prot, file);
    pthread_mutex_unlock(&device_lock);
    vsgx_maps_invalidate();
    return where;
}

VSGX_EXPORT void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    struct sgx_file *file = (flags & MAP_ANONYMOUS) ? NULL : file_of(fd);
    if (file != NULL) {
        if (file->kind != FILE_ENCLAVE) {
            errno = ENODEV;
            return MAP_FAILED;
        }
        return map_enclave(file, addr, length, prot, flags);
    }
    void *ret = REAL(mmap)(addr, length, prot, flags, fd, offset);
    if (ret != MAP_FAILED && (flags & MAP_FIXED) && any_device) {
        pthread_mutex_lock(&device_lock);
        if (overlaps_mapping((uint64_t)ret, (uint64_t)ret + PAGE_UP(length)))
            cut_mappings((uint64_t)ret, (uint64_t)ret + PAGE_UP(length));
        pthread_mutex_unlock(&device_lock);
    }
    vsgx_maps_invalidate();
    return ret;
}

VSGX_EXPORT void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    __attribute__((alias("mmap")));

VSGX_EXPORT int munmap(void *addr, size_t length)
{
    int ret = REAL(munmap)(addr, length);
    if (ret == 0 && any_device) {
        pthread_mutex_lock(&device_lock);
        uint64_t start = (uint64_t)addr, end = start + PAGE_UP(length);
        if (overlaps_mapping(start, end))
            cut_mappings(start, end);
        pthread_mutex_unlock(&device_lock);
    }
    vsgx_maps_invalidate();
    return ret;
}

VSGX_EXPORT int mprotect(void *addr, size_t length, int prot)
{
    uint64_t start = (uint64_t)addr, end = start + PAGE_UP(length);
    if (!any_device || start % PAGE || length == 0) {
        vsgx_maps_invalidate();
        return REAL(mprotect)(addr, length, prot);
    }
    pthread_mutex_lock(&device_lock);
    if (!overlaps_mapping(start, end)) {
        pthread_mutex_unlock(&device_lock);
        vsgx_maps_invalidate();
        return REAL(mprotect)(addr, length, prot);
    }
    /* VMA by VMA in address order, as mprotect_fixup goes: an enclave VMA
       asks sgx_vma_mprotect (EACCES above the pages' rights). */
    uint64_t at = start;
    int ret = 0;
    while (at < end && ret == 0) {
        int inside = -1;
        uint64_t next = end;
        for (int i = 0; i < mapping_count; i++) {
            if (mappings[i].start <= at && at < mappings[i].end)
                inside = i;
            else if (mappings[i].start > at && mappings[i].start < next)
                next = mappings[i].start;
        }
        if (inside < 0) {
            ret = REAL(mprotect)((void *)at, next - at, prot);
            at = next;
            continue;
        }
        struct mapping whole = mappings[inside];
        uint64_t stop = whole.end < end ? whole.end : end;
        struct vsgx_msg_mprotect request = {0};
        request.type = VSGX_MSG_MPROTECT;
        request.file = whole.file->id;
        request.address = at;
        request.length = stop - at;
        request.prot = (uint32_t)prot;
        int status = whole.file->size ? simple_request(&request, sizeof(request)) : 0;
        if (status < 0) {
            errno = -status;
            ret = -1;
            break;
        }
        /* Split so that each piece keeps its own protection. */
        mappings[inside] = mappings[--mapping_count];
        whole.file->mapped--;
        if (whole.start < at)
            add_mapping(whole.start, at, whole.prot, whole.file);
        add_mapping(at, stop, prot, whole.file);
        if (stop < whole.end)
            add_mapping(stop, whole.end, whole.prot, whole.file);
        at = stop;
    }
    pthread_mutex_unlock(&device_lock);
    vsgx_maps_invalidate();
    return ret;
}

void vsgx_device_after_fork(void)
{
    /* The child keeps the descriptors (memfds) but no enclave: it never
       asks the parent's launcher session about them. */
    pthread_mutex_init(&device_lock, NULL);
    memset(fd_table, 0, sizeof(fd_table));
    files = NULL;
    mapping_count = 0;
    any_device = 0;
}
