/* The SGX device files of the in-kernel driver (/dev/sgx_enclave,
   /dev/sgx/enclave, /dev/sgx_provision, /dev/sgx/provision) as the program
   sees them (arch/x86/kernel/cpu/sgx/driver.c, ioctl.c, encl.c); and the
   device files of the legacy drivers (/dev/isgx, /dev/sgx, /dev/sgx_prv),
   whose mmap makes an enclave here and whose ioctls legacy.c answers.

   An open is local and cheap (Intel's urts probes ~98 times per
   sgx_create_enclave): a memfd gives the program a real descriptor whose
   inode names the open file, so dup'ed descriptors are recognised. ioctls
   copy their argument and the buffers it points to (copy_from_user) and go
   to the launcher, whose vsgx.avm.uapi answers with the kernel's errno and
   the argument to copy back. The enclave outlives its descriptors while it
   is mapped (urts closes the fd, then unmaps).

   ADD_PAGES is answered here (urts makes one per page): every check of
   sgx_ioc_enclave_add_pages that can fail is made here, in its order
   (enclave state, the argument, source alignment, offset and length, the
   SECINFO, then per page: already added, the source readable), and the
   count written back; the pages are queued (a page that is one 32-bit
   pattern as its pattern only) and go to the launcher in ADD_RUNS at the
   next synchronous point: INIT, any other ioctl, a mapping of the file, or
   a full queue. What only the driver and the EVM can refuse (no EPC page
   left: ENOMEM; EADD of a TCS page whose contents it refuses, or the EVM
   gone: EIO) comes back there, from that INIT or ADD_PAGES; from then on
   every ADD_PAGES and INIT of the enclave fails with it (a program that
   checks its adds destroys the enclave at the first error anyway, and an
   enclave missing pages could never initialise). Not checked, here or
   before: the source's VM_MAYEXEC (EACCES for a noexec mount) and signals
   (ERESTARTSYS).

   What the program sees of ELRANGE: an anonymous PROT_NONE mapping where it
   maps the enclave fd (the EPC is unreadable from outside on hardware too:
   reads there return 0xFF there, here they fault). Its protections and
   extent are tracked here and mirrored to the EVM's page tables. */
#include "vsgx_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <link.h>
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

/* FILE_ISGX and FILE_DCAP are the legacy drivers' device files
   (legacy.c): their enclaves are FILE_ENCLAVE objects made by mmap of
   the device, referred to by address, that live as long as that mapping. */
enum file_kind { FILE_ENCLAVE = 1, FILE_PROVISION = 2, FILE_ISGX = 3, FILE_DCAP = 4 };

/* Offsets of added pages: sorted, disjoint, merged [start, end) spans
   (of one vm_max_prot: PROT_* bits, sgx_encl_page_alloc's). */
struct span {
    uint64_t start, end;
    int prot;
};

/* ADD_PAGES answered but not yet sent to the launcher. */
struct add_queue {
    struct vsgx_add_run runs[VSGX_ADD_RUNS_MAX];
    int run_count;
    int page_count;  /* pages of the runs that are not uniform, in order */
    uint8_t pages[VSGX_ADD_RUNS_PAGES][PAGE];
};

struct sgx_file {
    uint64_t id;
    int kind;
    int legacy;       /* FILE_ISGX or FILE_DCAP: an enclave of that driver's mmap */
    int fds;          /* descriptors that refer to this open file */
    int mapped;       /* tracked ranges that map it */
    dev_t dev;
    ino_t ino;
    uint64_t base, size;  /* ELRANGE, once created */
    atomic_int ioctl_busy;
    int initialized;  /* INIT succeeded */
    /* Initialized, its pages all added here and no SGX2 ioctl since: the
       spans say every page's vm_max_prot, so a mapping is checked here
       (sgx_encl_may_map) and sent with the next request (MAPS). */
    int maps_checked_here;
    /* An ioctl or a mapping of it reached this library: before that the
       launcher has heard nothing of it, and its release (a device probe's
       close) needs no round trip. */
    int used;
    int add_error;    /* -errno the driver or the EVM gave a queued add: final */
    struct span *added;
    int added_count, added_capacity;
    struct add_queue *queue;  /* made at the first ADD_PAGES */
    pthread_mutex_t queue_lock;
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
/* Which driver's nodes the program sees ($VSGX_EXEC_DRIVERS, from `vsgx
   exec --driver`): "in-kernel", "isgx", "dcap", or all of them (unset). A
   runtime probes them in its own order and takes the first that opens. */
enum { SHOW_IN_KERNEL = 1, SHOW_ISGX = 2, SHOW_DCAP = 4, SHOW_ALL = 7 };
static int shown_drivers;

static int drivers_shown(void)
{
    if (shown_drivers == 0) {
        const char *names = getenv("VSGX_EXEC_DRIVERS");
        int shown = 0;
        if (names != NULL) {
            shown |= strstr(names, "in-kernel") ? SHOW_IN_KERNEL : 0;
            shown |= strstr(names, "isgx") ? SHOW_ISGX : 0;
            shown |= strstr(names, "dcap") ? SHOW_DCAP : 0;
        }
        shown_drivers = shown ? shown : SHOW_ALL;
    }
    return shown_drivers;
}

static int device_kind_of(const char *path);

static int device_kind(const char *path)
{
    int kind = device_kind_of(path);
    int shown = kind ? drivers_shown() : 0;
    if (kind == FILE_ENCLAVE || (kind == FILE_PROVISION && strcmp(path, "/dev/sgx_prv")))
        return shown & SHOW_IN_KERNEL ? kind : 0;
    if (kind == FILE_ISGX)
        return shown & SHOW_ISGX ? kind : 0;
    if (kind == FILE_DCAP || kind == FILE_PROVISION)
        return shown & SHOW_DCAP ? kind : 0;
    return 0;
}

static int device_kind_of(const char *path)
{
    if (path == NULL)
        return 0;
    if (!strcmp(path, "/dev/sgx_enclave") || !strcmp(path, "/dev/sgx/enclave"))
        return FILE_ENCLAVE;
    if (!strcmp(path, "/dev/sgx_provision") || !strcmp(path, "/dev/sgx/provision") ||
        !strcmp(path, "/dev/sgx_prv"))  /* the DCAP driver's provisioning node */
        return FILE_PROVISION;
    if (!strcmp(path, "/dev/isgx"))
        return FILE_ISGX;
    if (!strcmp(path, "/dev/sgx"))  /* the DCAP driver before 1.36 */
        return FILE_DCAP;
    return 0;
}

static void device_stat(int kind, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFCHR | 0666;
    st->st_rdev = makedev(10, 124 + kind);
    st->st_dev = makedev(0, 5);
    st->st_nlink = 1;
    st->st_blksize = 4096;
    st->st_ino = 1124 + (ino_t)kind;
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
                           (long)(kind == FILE_ENCLAVE ? "sgx_enclave"
                                  : kind == FILE_PROVISION ? "sgx_provision" : "isgx"),
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
    pthread_mutex_init(&file->queue_lock, NULL);
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
    if (file->kind == FILE_ENCLAVE)
        vsgx_fast_release_file(file->id);
    if (file->kind == FILE_ENCLAVE && __atomic_load_n(&file->used, __ATOMIC_ACQUIRE) &&
        vsgx_channel_available()) {
        struct vsgx_msg_release request = {0};
        request.type = VSGX_MSG_RELEASE;
        request.file = file->id;
        simple_request(&request, sizeof(request));
    }
    /* Queued pages of an enclave that goes never reach it. */
    free(file->queue);
    free(file->added);
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
    if (kind == FILE_DCAP && (flags & O_DIRECTORY))
        kind = 0;  /* /dev/sgx is the in-kernel nodes' folder on a real system */
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
    if (kind == FILE_DCAP && (flags & O_DIRECTORY))
        kind = 0;
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

static int send_ioctl(struct ioctl_call *call, struct vsgx_msg_ioctl_done *done)
{
    struct iovec iov[2];
    int n = 0;
    iov[n++] = (struct iovec){&call->request, sizeof(call->request)};
    if (call->buffer_size)
        iov[n++] = (struct iovec){call->buffer, call->buffer_size};
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

/* -- ADD_PAGES, answered here ---------------------------------------------- */
#define SECINFO_R 0x1ULL
#define SECINFO_W 0x2ULL
#define SECINFO_PERMISSION_MASK 0x7ULL
#define SECINFO_PAGE_TYPE_MASK (0xffULL << 8)
#define SECINFO_RESERVED_MASK (~(SECINFO_PERMISSION_MASK | SECINFO_PAGE_TYPE_MASK))
#define SECINFO_TCS (1ULL << 8)
#define SECINFO_REG (2ULL << 8)
#define SGX_PAGE_MEASURE 0x1ULL

/* Whether [address, address + length) lies in this thread's live stack
   (above our own frame), where reading and writing cannot fault: the
   argument and SECINFO of an ioctl usually are. Anywhere else (or on an
   alternate signal stack) they are copied with the kernel's checks. */
static __thread uint64_t stack_low, stack_high;

static int on_live_stack(uint64_t address, size_t length)
{
    if (stack_high == 0) {
        pthread_attr_t attr;
        void *low;
        size_t size;
        stack_high = 1;  /* unknown: never */
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            if (pthread_attr_getstack(&attr, &low, &size) == 0) {
                stack_low = (uint64_t)low;
                stack_high = (uint64_t)low + size;
            }
            pthread_attr_destroy(&attr);
        }
    }
    uint64_t frame = (uint64_t)__builtin_frame_address(0);
    return frame > stack_low && frame < stack_high && address >= frame &&
           address + length >= address && address + length <= stack_high;
}

/* The readable PT_LOAD segments of the ELF objects loaded when first asked
   (.data and .bss, where urts keeps its page buffer): memory that only a
   munmap, mprotect or MAP_FIXED through us, or a dlclose, can take away,
   and each of those drops what it touches from the list. */
#define STATIC_SEGMENTS 512
static struct span static_segments[STATIC_SEGMENTS];
static int static_count = -1;  /* -1: not collected yet */
static pthread_mutex_t static_lock = PTHREAD_MUTEX_INITIALIZER;
static int (*real_dlclose)(void *);

static int collect_segments(struct dl_phdr_info *info, size_t size, void *data)
{
    for (int i = 0; i < info->dlpi_phnum && static_count < STATIC_SEGMENTS; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_R) || ph->p_memsz == 0)
            continue;
        uint64_t start = info->dlpi_addr + ph->p_vaddr;
        static_segments[static_count++] = (struct span){PAGE_DOWN(start),
                                                        PAGE_UP(start + ph->p_memsz), 0};
    }
    return 0;
}

static int in_static_segment(uint64_t address, size_t length)
{
    if (address + length < address)
        return 0;
    int found = 0;
    pthread_mutex_lock(&static_lock);
    if (static_count < 0) {
        static_count = 0;
        dl_iterate_phdr(collect_segments, NULL);
    }
    for (int i = 0; i < static_count && !found; i++)
        found = static_segments[i].start <= address &&
                address + length <= static_segments[i].end;
    pthread_mutex_unlock(&static_lock);
    return found;
}

/* The program changed [start, end) through us: those segments are not
   known readable any more. */
static void static_segments_forget(uint64_t start, uint64_t end)
{
    pthread_mutex_lock(&static_lock);
    if (static_count < 0) {  /* collect first: what changes now must not be added later */
        static_count = 0;
        dl_iterate_phdr(collect_segments, NULL);
    }
    for (int i = 0; i < static_count;) {
        if (static_segments[i].start < end && start < static_segments[i].end)
            static_segments[i] = static_segments[--static_count];
        else
            i++;
    }
    pthread_mutex_unlock(&static_lock);
}

VSGX_EXPORT int dlclose(void *handle)
{
    pthread_mutex_lock(&static_lock);
    static_count = 0;  /* an object's segments may go: none is trusted again */
    pthread_mutex_unlock(&static_lock);
    return REAL(dlclose)(handle);
}

/* Memory that cannot fault: read in place. */
static int readable_in_place(uint64_t address, size_t length)
{
    return on_live_stack(address, length) || in_static_segment(address, length);
}

/* copy_from_user: plain copies where the memory cannot fault, the kernel's
   checked copy (process_vm_readv) elsewhere. */
static int copy_in(uint64_t address, void *out, size_t length)
{
    if (readable_in_place(address, length)) {
        memcpy(out, (const void *)address, length);
        return 0;
    }
    return vsgx_read_own(address, out, length);
}

static int copy_out(uint64_t address, const void *data, size_t length)
{
    if (on_live_stack(address, length)) {
        memcpy((void *)address, data, length);
        return 0;
    }
    return vsgx_write_own(address, data, length);
}

/* sgx_validate_secinfo */
static int secinfo_valid(const uint64_t secinfo[8])
{
    uint64_t perm = secinfo[0] & SECINFO_PERMISSION_MASK;
    uint64_t type = secinfo[0] & SECINFO_PAGE_TYPE_MASK;
    if (type != SECINFO_REG && type != SECINFO_TCS)
        return 0;
    if ((perm & SECINFO_W) && !(perm & SECINFO_R))
        return 0;
    if (type == SECINFO_TCS && perm)
        return 0;
    if (secinfo[0] & SECINFO_RESERVED_MASK)
        return 0;
    for (int i = 1; i < 8; i++)
        if (secinfo[i])
            return 0;
    return 1;
}

/* The first span that ends after offset (binary search). */
static int span_after(const struct sgx_file *file, uint64_t offset)
{
    int lo = 0, hi = file->added_count;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (file->added[mid].end <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int page_added(const struct sgx_file *file, uint64_t offset)
{
    int i = span_after(file, offset);
    return i < file->added_count && file->added[i].start <= offset;
}

/* Record a page as added (a new page is usually just after the last). */
static void mark_added(struct sgx_file *file, uint64_t offset, int prot)
{
    int i = span_after(file, offset);
    if (i > 0 && file->added[i - 1].end == offset && file->added[i - 1].prot == prot) {
        file->added[i - 1].end = offset + PAGE;
        if (i < file->added_count && file->added[i].start == offset + PAGE &&
            file->added[i].prot == prot) {
            file->added[i - 1].end = file->added[i].end;
            memmove(&file->added[i], &file->added[i + 1],
                    (size_t)(file->added_count - i - 1) * sizeof(struct span));
            file->added_count--;
        }
        return;
    }
    if (i < file->added_count && file->added[i].start == offset + PAGE &&
        file->added[i].prot == prot) {
        file->added[i].start = offset;
        return;
    }
    /* make_room made room */
    memmove(&file->added[i + 1], &file->added[i],
            (size_t)(file->added_count - i) * sizeof(struct span));
    file->added[i] = (struct span){offset, offset + PAGE, prot};
    file->added_count++;
}

/* Send the queue (queue_lock held): 0, or the error that is now final. */
static int flush_adds(struct sgx_file *file)
{
    struct add_queue *queue = file->queue;
    if (queue == NULL || queue->run_count == 0)
        return file->add_error;
    struct vsgx_msg_add_runs request = {0};
    request.type = VSGX_MSG_ADD_RUNS;
    request.file = file->id;
    request.runs = (uint32_t)queue->run_count;
    request.pages = (uint32_t)queue->page_count;
    struct iovec iov[3] = {
        {&request, sizeof(request)},
        {queue->runs, (size_t)queue->run_count * sizeof(struct vsgx_add_run)},
        {queue->pages, (size_t)queue->page_count * PAGE},
    };
    struct vsgx_reply reply;
    int ret = vsgx_call_iov(iov, queue->page_count ? 3 : 2, &reply);
    queue->run_count = queue->page_count = 0;
    if (ret == 0) {
        struct vsgx_msg_ioctl_done done;
        if (reply.length < sizeof(done))
            ret = -EIO;
        else {
            memcpy(&done, reply.data, sizeof(done));
            ret = done.status;
        }
    }
    if (ret < 0 && file->add_error == 0)
        file->add_error = ret;
    return file->add_error;
}

/* Queue one checked page, read into the next page slot (make_room first). */
static void queue_page(struct sgx_file *file, uint64_t offset, uint64_t secinfo,
                       uint32_t flags, uint32_t fill)
{
    struct add_queue *queue = file->queue;
    struct vsgx_add_run *last = queue->run_count ? &queue->runs[queue->run_count - 1] : NULL;
    int uniform = flags & VSGX_ADD_RUN_UNIFORM;
    if (last != NULL && last->secinfo == secinfo && last->flags == flags &&
        last->offset + last->count * PAGE == offset && (!uniform || last->fill == fill) &&
        (uniform || (secinfo & SECINFO_PAGE_TYPE_MASK) == SECINFO_REG))
        last->count++;
    else
        queue->runs[queue->run_count++] = (struct vsgx_add_run){offset, 1, secinfo, fill, flags};
    if (!uniform)
        queue->page_count++;  /* the page was read into its slot */
    /* vm_max_prot: a TCS page is RW whatever its SECINFO (which has none) */
    int tcs = (secinfo & SECINFO_PAGE_TYPE_MASK) == SECINFO_TCS;
    mark_added(file, offset, tcs ? PROT_READ | PROT_WRITE
                                 : (int)(secinfo & SECINFO_PERMISSION_MASK));  /* R W X = PROT_* */
}

/* Room for one more page: a run, a page slot, a span (flushing if full). */
static int make_room(struct sgx_file *file)
{
    struct add_queue *queue = file->queue;
    if (queue->run_count == VSGX_ADD_RUNS_MAX || queue->page_count == VSGX_ADD_RUNS_PAGES) {
        int ret = flush_adds(file);
        if (ret < 0)
            return ret;
    }
    if (file->added_count == file->added_capacity) {
        int capacity = file->added_capacity ? 2 * file->added_capacity : 64;
        struct span *grown = realloc(file->added, (size_t)capacity * sizeof(struct span));
        if (grown == NULL)
            return -ENOMEM;
        file->added = grown;
        file->added_capacity = capacity;
    }
    return 0;
}

static long add_pages(struct sgx_file *file, uint64_t arg_address)
{
    /* sgx_ioc_enclave_add_pages, check by check. */
    if (file->size == 0 || file->initialized)
        return -EINVAL;
    uint64_t arg[6];  /* src offset length secinfo flags count */
    if (copy_in(arg_address, arg, sizeof(arg)) < 0)
        return -EFAULT;
    uint64_t src = arg[0], offset = arg[1], length = arg[2];
    if (src % PAGE)
        return -EINVAL;
    /* sgx_validate_offset_length */
    if (offset % PAGE || length == 0 || length % PAGE || offset + length < offset ||
        offset + length - PAGE >= file->size)
        return -EINVAL;
    uint64_t secinfo[8];
    if (copy_in(arg[3], secinfo, sizeof(secinfo)) < 0)
        return -EFAULT;
    if (!secinfo_valid(secinfo))
        return -EINVAL;
    pthread_mutex_lock(&file->queue_lock);
    long ret = file->add_error;
    if (ret == 0 && file->queue == NULL) {
        file->queue = malloc(sizeof(*file->queue));
        if (file->queue == NULL)
            ret = -ENOMEM;
        else
            file->queue->run_count = file->queue->page_count = 0;
    }
    uint64_t done = 0;
    uint32_t flags = (arg[4] & SGX_PAGE_MEASURE) ? VSGX_ADD_RUN_MEASURE : 0;
    int reg = (secinfo[0] & SECINFO_PAGE_TYPE_MASK) == SECINFO_REG;
    for (; ret == 0 && done < length; done += PAGE) {
        if (page_added(file, offset + done)) {
            ret = -EBUSY;  /* xa_insert: the page is there */
            break;
        }
        if ((ret = make_room(file)) < 0)
            break;
        struct add_queue *queue = file->queue;
        uint8_t *page = queue->pages[queue->page_count];
        /* A uniform REG page (a heap, a stack) needs no copy: only its fill
           goes; where the source cannot fault it is looked at in place. */
        const uint8_t *in_place = reg && readable_in_place(src + done, PAGE)
                                      ? (const uint8_t *)(src + done) : NULL;
        int uniform = in_place != NULL && memcmp(in_place, in_place + 4, PAGE - 4) == 0;
        if (uniform) {
            page = (uint8_t *)in_place;
        } else if (copy_in(src + done, page, PAGE) < 0) {
            ret = -EFAULT;  /* get_user_pages */
            break;
        } else if (in_place == NULL) {
            uniform = reg && memcmp(page, page + 4, PAGE - 4) == 0;
        }
        uint32_t fill;
        memcpy(&fill, page, 4);
        queue_page(file, offset + done, secinfo[0], flags | (uniform ? VSGX_ADD_RUN_UNIFORM : 0),
                   uniform ? fill : 0);
    }
    pthread_mutex_unlock(&file->queue_lock);
    arg[5] = done;
    if (copy_out(arg_address, arg, sizeof(arg)) < 0)
        return -EFAULT;
    return ret;
}

/* Before a synchronous point of the file (queue_lock not held). */
static int flush_file(struct sgx_file *file)
{
    if (file->queue == NULL && file->add_error == 0)
        return 0;
    pthread_mutex_lock(&file->queue_lock);
    int ret = flush_adds(file);
    pthread_mutex_unlock(&file->queue_lock);
    return ret;
}

static long enclave_ioctl(struct sgx_file *file, unsigned long cmd, uint64_t arg_address)
{
    __atomic_store_n(&file->used, 1, __ATOMIC_RELEASE);
    switch (cmd) {
    case SGX_IOC_ENCLAVE_CREATE:
    case SGX_IOC_ENCLAVE_ADD_PAGES:
    case SGX_IOC_ENCLAVE_INIT:
    case SGX_IOC_ENCLAVE_PROVISION:
    case SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS:
    case SGX_IOC_ENCLAVE_MODIFY_TYPES:
    case SGX_IOC_ENCLAVE_REMOVE_PAGES:
        break;
    case VSGX_LEGACY_INIT:
    case VSGX_DCAP_INIT:
    case VSGX_LEGACY_EXTEND:
        if (file->legacy)
            break;
        return -ENOTTY;
    default:
        return -ENOTTY;  /* -ENOIOCTLCMD, also SGX_IOC_VEPC_REMOVE_ALL on an enclave fd */
    }
    int init_cmd = cmd == SGX_IOC_ENCLAVE_INIT || cmd == VSGX_LEGACY_INIT || cmd == VSGX_DCAP_INIT;
    if (!vsgx_channel_available())
        return -ENODEV;
    if (cmd == SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS || cmd == SGX_IOC_ENCLAVE_MODIFY_TYPES ||
        cmd == SGX_IOC_ENCLAVE_REMOVE_PAGES) {
        pthread_mutex_lock(&device_lock);
        file->maps_checked_here = 0;  /* pages change type or go: the launcher decides */
        pthread_mutex_unlock(&device_lock);
    }
    int expected = 0;
    if (!atomic_compare_exchange_strong(&file->ioctl_busy, &expected, 1))
        return -EBUSY;
    if (cmd == SGX_IOC_ENCLAVE_ADD_PAGES) {
        long added = add_pages(file, arg_address);
        atomic_store(&file->ioctl_busy, 0);
        return added;
    }
    /* Every other ioctl is a synchronous point: the queued pages go first.
       INIT answers for them (the kernel's INIT flushed its queued EADDs
       too, in the driver's first versions). */
    if (!(init_cmd && file->initialized)) {
        int flushed = flush_file(file);
        if (flushed < 0 && init_cmd && file->size) {
            atomic_store(&file->ioctl_busy, 0);
            return flushed;
        }
    }
    static __thread struct ioctl_call call;
    memset(&call.request, 0, sizeof(call.request));
    call.buffer_size = 0;
    call.request.type = VSGX_MSG_IOCTL;
    call.request.file = file->id;
    call.request.cmd = (uint32_t)cmd;
    if (file->legacy)
        call.request.flags |= VSGX_LEGACY_DRIVER;
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
        else if (cmd == VSGX_LEGACY_INIT || cmd == VSGX_DCAP_INIT)
            want = SIGSTRUCT_SIZE, where = arg[1];  /* {addr, sigstruct[, einittoken]} */
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
        if (cmd == VSGX_LEGACY_INIT) {  /* the EINITTOKEN after the SIGSTRUCT */
            call.buffer_size += VSGX_EINITTOKEN_SIZE;
            if (vsgx_read_own(arg[2], call.buffer + want, VSGX_EINITTOKEN_SIZE) < 0) {
                memset(call.buffer + want, 0, VSGX_EINITTOKEN_SIZE);
                call.request.flags &= ~(uint32_t)VSGX_BUFFER_READABLE;
            }
        }
    }
    struct vsgx_msg_ioctl_done done;
    ret = send_ioctl(&call, &done);
    if (ret == 0)
        ret = finish_ioctl(&call, &done, arg_address, arg_size);
    if (init_cmd && ret == 0) {
        file->initialized = 1;
        file->maps_checked_here = !file->legacy && file->add_error == 0;
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
    long ret = file->kind == FILE_ENCLAVE ? enclave_ioctl(file, cmd, (uint64_t)arg)
               : file->kind == FILE_ISGX || file->kind == FILE_DCAP
                   ? vsgx_legacy_ioctl(file->kind == FILE_DCAP, cmd, (uint64_t)arg)
                   : -ENOTTY;
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

/* ELRANGE of an enclave file (0), or -ENOENT. */
int vsgx_enclave_range(uint64_t file, uint64_t *base, uint64_t *size)
{
    int ret = -ENOENT;
    pthread_mutex_lock(&device_lock);
    for (struct sgx_file *f = files; f; f = f->next)
        if (f->id == file && f->size) {
            *base = f->base;
            *size = f->size;
            ret = 0;
            break;
        }
    pthread_mutex_unlock(&device_lock);
    return ret;
}

static void add_mapping(uint64_t start, uint64_t end, int prot, struct sgx_file *file)
{
    if (mapping_count == MAX_MAPPINGS)
        vsgx_fatal("more than %d enclave mappings", MAX_MAPPINGS);
    mappings[mapping_count++] = (struct mapping){start, end, prot, file};
    file->mapped++;
}

static void send_unmap(const struct sgx_file *file, uint64_t start, uint64_t length);

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
        if (m.file->size && vsgx_channel_available())
            send_unmap(m.file, cut_start, cut_end - cut_start);
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

/* sgx_encl_may_map of an initialized enclave whose pages were all added
   here (maps_checked_here; device_lock held): 0 or -EACCES. */
static int may_map_here(const struct sgx_file *file, uint64_t start, uint64_t end, int prot)
{
    if (start < file->base || end > file->base + file->size)
        return -EACCES;
    int wanted = prot & (PROT_READ | PROT_WRITE | PROT_EXEC);
    uint64_t first = start - file->base, last = end - file->base;
    for (int i = span_after(file, first); i < file->added_count && file->added[i].start < last;
         i++)
        if (wanted & ~file->added[i].prot)
            return -EACCES;
    return 0;
}

/* Mappings answered here, not yet sent: MAPS goes before the process's next
   request to the launcher and before an entry (vsgx_maps_flush), so the
   launcher and the EVM see them in order and before the enclave runs. */
static struct vsgx_map_record pending_maps[VSGX_MAPS_MAX];
static atomic_int pending_count;
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;

static int flush_maps_locked(void)
{
    int count = atomic_load(&pending_count);
    if (count == 0)
        return 0;
    struct vsgx_msg_maps request = {0};
    request.type = VSGX_MSG_MAPS;
    request.count = (uint32_t)count;
    struct iovec iov[2] = {{&request, sizeof(request)},
                           {pending_maps, (size_t)count * sizeof(pending_maps[0])}};
    struct vsgx_reply reply;
    int ret = vsgx_call_unflushed(iov, 2, &reply);
    atomic_store(&pending_count, 0);
    if (ret == 0) {
        struct vsgx_msg_done done;
        if (reply.length < sizeof(done))
            return -EIO;
        memcpy(&done, reply.data, sizeof(done));
        ret = done.status;
    }
    if (ret < 0)
        vsgx_log("mappings answered here were refused later (%d)", ret);
    return ret < 0 ? -EIO : 0;
}

int vsgx_maps_flush(void)
{
    if (atomic_load(&pending_count) == 0)
        return 0;
    pthread_mutex_lock(&pending_lock);
    int ret = flush_maps_locked();
    pthread_mutex_unlock(&pending_lock);
    return ret;
}

static int queue_map(const struct sgx_file *file, uint64_t start, uint64_t length, int prot,
                     uint32_t flags)
{
    pthread_mutex_lock(&pending_lock);
    int ret = 0;
    if (atomic_load(&pending_count) == VSGX_MAPS_MAX)
        ret = flush_maps_locked();
    if (ret == 0) {
        int n = atomic_load(&pending_count);
        pending_maps[n] = (struct vsgx_map_record){file->id, start, length, (uint32_t)prot,
                                                   flags};
        atomic_store(&pending_count, n + 1);
    }
    pthread_mutex_unlock(&pending_lock);
    return ret;
}

/* An munmap's UNMAP (device_lock held): queued as a MAPS record, and sent
   with the process's next request, when no entry is in flight (no enclave
   code can touch the pages before that: an entry sends the queue first);
   sent now otherwise, as the pages must go from code running now. The
   queue's count is written before the entries are counted, and vsgx_enter
   counts itself before it reads the queue: one of the two sees the other. */
static void send_unmap(const struct sgx_file *file, uint64_t start, uint64_t length)
{
    if (queue_map(file, start, length, 0, VSGX_MAP_RECORD_UNMAP) == 0) {
        /* A failed flush is a lost launcher session: the next entry fails too. */
        if (atomic_load(&vsgx_entries_running) != 0 && vsgx_maps_flush() != 0)
            vsgx_log("an munmap of the enclave could not be sent");
        return;
    }
    struct vsgx_msg_unmap request = {0};
    request.type = VSGX_MSG_UNMAP;
    request.file = file->id;
    request.address = start;
    request.length = length;
    simple_request(&request, sizeof(request));
}

static void *map_enclave(struct sgx_file *file, void *addr, size_t length, int prot, int flags)
{
    __atomic_store_n(&file->used, 1, __ATOMIC_RELEASE);
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
    int status = 0, cut = 0;
    struct vsgx_msg_map request = {0};
    request.type = VSGX_MSG_MAP;
    request.file = file->id;
    request.address = (uint64_t)where;
    request.length = size;
    request.prot = (uint32_t)prot;
    request.flags = (uint32_t)flags;
    if (file->size && file->maps_checked_here) {
        status = may_map_here(file, (uint64_t)where, (uint64_t)where + size, prot);
        if (status == 0 && (flags & MAP_FIXED)) {
            /* Known to succeed: the old mappings' UNMAPs go ahead of it. */
            cut_mappings((uint64_t)where, (uint64_t)where + size);
            cut = 1;
        }
        if (status == 0)
            status = queue_map(file, (uint64_t)where, size, prot, (uint32_t)flags);
    } else if (file->size) {  /* before ECREATE nothing limits a mapping */
        flush_file(file);  /* what may be mapped depends on the pages added */
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
        static_segments_forget((uint64_t)where, (uint64_t)where + size);
        if (!cut && overlaps_mapping((uint64_t)where, (uint64_t)where + size)) {
            cut_mappings((uint64_t)where, (uint64_t)where + size);
            /* The launcher heard the old mappings go after the new one came:
               it hears the new one again. */
            if (file->size)
                simple_request(&request, sizeof(request));
        }
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

/* mmap of a legacy driver's device (sgx_get_unmapped_area, sgx_mmap of
   intel/linux-sgx-driver): the whole ELRANGE, a power of two of at least
   two pages, shared, placed at an address aligned to its size; the
   mapping is a new enclave, which CREATE then fills. */
static void *map_legacy(struct sgx_file *device, void *addr, size_t length, int prot,
                        int flags)
{
    uint32_t leaf[4];
    vsgx_cpuid_answer(0x12, 0, leaf);
    unsigned max_bits = (leaf[3] >> 8) & 0xff;
    if (length < 2 * PAGE || (length & (length - 1)) || (flags & MAP_TYPE) != MAP_SHARED ||
        (max_bits < 64 && length > (1ULL << max_bits))) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    void *where = addr;
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
        if ((uint64_t)addr & (length - 1)) {
            errno = EINVAL;  /* the driver would move it to the next aligned address */
            return MAP_FAILED;
        }
    } else {
        /* get_unmapped_area of twice the size, aligned up, the rest given back */
        uint8_t *area = vsgx_mmap_raw(addr, 2 * length, PROT_NONE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (area == (void *)-1)
            return MAP_FAILED;
        uint64_t aligned = ((uint64_t)area + length - 1) & ~((uint64_t)length - 1);
        if (aligned > (uint64_t)area)
            vsgx_munmap_raw(area, aligned - (uint64_t)area);
        if ((uint64_t)area + 2 * length > aligned + length)
            vsgx_munmap_raw((void *)(aligned + length),
                            (uint64_t)area + 2 * length - aligned - length);
        where = (void *)aligned;
        flags |= MAP_FIXED;
    }
    struct sgx_file *encl = calloc(1, sizeof(*encl));
    if (encl == NULL) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    encl->kind = FILE_ENCLAVE;
    encl->legacy = device->kind;
    encl->dev = (dev_t)-1;  /* no descriptor: never found by file_of */
    encl->ino = (ino_t)-1;
    pthread_mutex_init(&encl->queue_lock, NULL);
    pthread_mutex_lock(&device_lock);
    encl->id = ((uint64_t)vsgx_pid << 32) | next_file_id++;
    encl->next = files;
    files = encl;
    pthread_mutex_unlock(&device_lock);
    void *ret = map_enclave(encl, where, length, prot, flags);
    if (ret == MAP_FAILED) {
        pthread_mutex_lock(&device_lock);
        maybe_release(encl);  /* nothing maps it: it goes */
        pthread_mutex_unlock(&device_lock);
    }
    return ret;
}

/* The enclave of a legacy driver's mapping at `address` (sgx_find_encl),
   or with `exact`, the one mapping of [address, address + size) that
   CREATE needs. NULL if there is none. */
struct sgx_file *vsgx_legacy_enclave_at(int kind, uint64_t address, uint64_t size, int exact)
{
    struct sgx_file *found = NULL;
    pthread_mutex_lock(&device_lock);
    for (int i = 0; i < mapping_count && found == NULL; i++) {
        struct mapping *m = &mappings[i];
        if (m->file->legacy != kind)
            continue;
        if (exact ? m->start == address && m->end - m->start == size
                  : m->start <= address && address < m->end)
            found = m->file;
    }
    pthread_mutex_unlock(&device_lock);
    return found;
}

int vsgx_legacy_created(const struct sgx_file *file, uint64_t *base, uint64_t *size,
                        int *initialized)
{
    *base = file->base;
    *size = file->size;
    *initialized = file->initialized;
    return file->size != 0;
}

long vsgx_enclave_ioctl(struct sgx_file *file, unsigned long cmd, uint64_t arg_address)
{
    return enclave_ioctl(file, cmd, arg_address);
}

int vsgx_is_provision_fd(int fd)
{
    struct sgx_file *file = file_of(fd);
    return file != NULL && file->kind == FILE_PROVISION;
}

VSGX_EXPORT void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    struct sgx_file *file = (flags & MAP_ANONYMOUS) ? NULL : file_of(fd);
    if (file != NULL) {
        if (file->kind == FILE_ISGX || file->kind == FILE_DCAP)
            return map_legacy(file, addr, length, prot, flags);
        if (file->kind != FILE_ENCLAVE) {
            errno = ENODEV;
            return MAP_FAILED;
        }
        return map_enclave(file, addr, length, prot, flags);
    }
    if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
        static_segments_forget((uint64_t)addr, (uint64_t)addr + PAGE_UP(length));
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
    static_segments_forget((uint64_t)addr, (uint64_t)addr + PAGE_UP(length));
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
    static_segments_forget(PAGE_DOWN(start), end);
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
        if (whole.file->size)
            flush_file(whole.file);
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
    pthread_mutex_init(&pending_lock, NULL);
    atomic_store(&pending_count, 0);  /* the parent's, for its session */
    atomic_store(&vsgx_entries_running, 0);  /* the parent's threads' entries */
}
