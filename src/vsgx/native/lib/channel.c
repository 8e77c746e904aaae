/* The way to the launcher (the program's AVM): a session socket per process
   and a socket per thread, registered over the control socket inherited in
   VSGX_EXEC_FD (see vsgx/channel/device.py). A thread waiting for a reply
   answers the launcher's page requests for the EVM meanwhile. */
#include "vsgx_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define RECV_BUFFER (VSGX_MAX_DATAGRAM + 4096)

static int control_fd = -2;  /* -2: not looked up yet */
static int session_fd = -1;
static pid_t session_pid;
static pthread_mutex_t session_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t thread_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

struct thread_channel {
    int fd;
    pid_t pid;
    uint8_t *buffer;
};
static __thread struct thread_channel channel = {-1, 0, NULL};

/* Every descriptor of ours in this process (other threads' sockets too). */
#define INTERNAL_FDS 65536
static _Atomic uint8_t internal[INTERNAL_FDS / 8];

static void mark_internal(int fd, int on)
{
    if (fd < 0 || fd >= INTERNAL_FDS)
        return;
    if (on)
        internal[fd / 8] |= (uint8_t)(1u << (fd % 8));
    else
        internal[fd / 8] &= (uint8_t)~(1u << (fd % 8));
}

static void close_internal(int fd)
{
    mark_internal(fd, 0);
    vsgx_close_raw(fd);
}

/* Our sockets live at high descriptor numbers, out of the program's way. */
static int move_high(int fd)
{
    struct rlimit limit;
    long floor = 900;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
        (long)limit.rlim_cur - 128 < floor)
        floor = (long)limit.rlim_cur / 2;
    long moved = vsgx_syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, floor, 0, 0, 0);
    if (moved < 0) {
        mark_internal(fd, 1);
        return fd;
    }
    vsgx_close_raw(fd);
    mark_internal((int)moved, 1);
    return (int)moved;
}

extern char **environ;

/* The LD_PRELOAD form without `vsgx exec` around the program: start the
   launcher ourselves (VSGX_EXEC_SPAWN, a shell command; `vsgx exec
   --print-env` prints one), detached, with the other end of a new control
   socket, and take the CPUID model it sends first. Children of the program
   find the same launcher through VSGX_EXEC_FD. */
static int spawn_launcher(const char *command)
{
    int pair[2];
    if (vsgx_syscall(SYS_socketpair, AF_UNIX, SOCK_SEQPACKET, 0, (long)pair, 0, 0) < 0)
        return -1;
    /* Everything the child needs is made before fork: it only execs. */
    static char attach[64];
    snprintf(attach, sizeof(attach), "VSGX_EXEC_ATTACH_FD=%d", pair[1]);
    size_t count = 0;
    while (environ != NULL && environ[count] != NULL)
        count++;
    char **env = calloc(count + 2, sizeof(char *));
    if (env == NULL)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < count; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) && strncmp(environ[i], "VSGX_EXEC_", 10))
            env[n++] = environ[i];
    env[n++] = attach;
    env[n] = NULL;
    char *argv[] = {"sh", "-c", (char *)command, NULL};
    long child = vsgx_syscall(SYS_fork, 0, 0, 0, 0, 0, 0);
    if (child == 0) {
        /* A second fork leaves the launcher to init: no zombie, no wait. */
        if (vsgx_syscall(SYS_fork, 0, 0, 0, 0, 0, 0) == 0) {
            vsgx_syscall(SYS_setsid, 0, 0, 0, 0, 0, 0);
            vsgx_close_raw(pair[0]);
            vsgx_syscall(SYS_execve, (long)"/bin/sh", (long)argv, (long)env, 0, 0, 0);
        }
        vsgx_syscall(SYS_exit_group, 0, 0, 0, 0, 0, 0);
    }
    free(env);
    vsgx_close_raw(pair[1]);
    if (child < 0) {
        vsgx_close_raw(pair[0]);
        return -1;
    }
    vsgx_syscall(SYS_wait4, child, 0, 0, 0, 0, 0);
    /* The model, once the launcher's EVM is up. */
    static char text[4096];
    uint8_t model[8 + 8 + 16 * 16];
    long got;
    do
        got = vsgx_syscall(SYS_recvfrom, pair[0], (long)model, sizeof(model), 0, 0, 0);
    while (got == -EINTR);
    struct vsgx_msg_cpuid_model header;
    if (got < (long)sizeof(header)) {
        vsgx_close_raw(pair[0]);
        vsgx_log("the launcher (%s) did not start", command);
        return -1;
    }
    memcpy(&header, model, sizeof(header));
    size_t words = ((size_t)got - sizeof(header)) / 4, used = 0;
    for (size_t i = 0; i < words && used + 9 < sizeof(text); i++) {
        uint32_t value;
        memcpy(&value, model + sizeof(header) + 4 * i, 4);
        used += (size_t)snprintf(text + used, sizeof(text) - used, "%08x", value);
    }
    setenv("VSGX_EXEC_CPUID", text, 1);
    int fd = pair[0];
    char number[16];
    snprintf(number, sizeof(number), "%d", fd);
    setenv("VSGX_EXEC_FD", number, 1);
    vsgx_cpuid_reload_model();
    return fd;
}

static int get_control_fd(void)
{
    if (control_fd == -2) {
        const char *text = getenv("VSGX_EXEC_FD");
        control_fd = -1;
        if (text != NULL && *text) {
            char *end;
            long value = strtol(text, &end, 10);
            if (*end == '\0' && value >= 0 && value < 1 << 20 &&
                vsgx_syscall(SYS_fcntl, value, F_GETFD, 0, 0, 0, 0) >= 0) {
                control_fd = (int)value;
                mark_internal(control_fd, 1);
            }
        }
        const char *spawn = getenv("VSGX_EXEC_SPAWN");
        if (control_fd < 0 && spawn != NULL && *spawn) {
            control_fd = spawn_launcher(spawn);
            mark_internal(control_fd, 1);
        }
    }
    return control_fd;
}

int vsgx_channel_available(void)
{
    return get_control_fd() >= 0;
}

int vsgx_channel_is_internal_fd(int fd)
{
    return fd >= 0 && fd < INTERNAL_FDS && (internal[fd / 8] >> (fd % 8)) & 1;
}

static int send_with_fd(int via, const void *message, size_t size, int fd)
{
    struct iovec iov = {(void *)message, size};
    union {
        struct cmsghdr header;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof(control.space);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    long ret;
    do
        ret = vsgx_syscall(SYS_sendmsg, via, (long)&msg, MSG_NOSIGNAL, 0, 0, 0);
    while (ret == -EINTR);
    return ret < 0 ? (int)ret : 0;
}

static int new_pair(int out[2])
{
    long ret = vsgx_syscall(SYS_socketpair, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0,
                            (long)out, 0, 0);
    return (int)ret;
}

static int ensure_session(void)
{
    int ret = 0;
    pthread_mutex_lock(&session_lock);
    if (session_fd >= 0 && session_pid == vsgx_pid)
        goto out;
    if (get_control_fd() < 0) {
        ret = -ENODEV;
        goto out;
    }
    int pair[2];
    ret = new_pair(pair);
    if (ret < 0)
        goto out;
    struct vsgx_msg_session hello = {0};
    hello.type = VSGX_MSG_SESSION;
    hello.version = VSGX_PROTOCOL_VERSION;
    hello.pid = (uint32_t)vsgx_pid;
    hello.ppid = (uint32_t)vsgx_syscall(SYS_getppid, 0, 0, 0, 0, 0, 0);
    ret = send_with_fd(control_fd, &hello, sizeof(hello), pair[1]);
    vsgx_close_raw(pair[1]);
    if (ret < 0) {
        vsgx_close_raw(pair[0]);
        vsgx_log("cannot reach the launcher: %s", strerror(-ret));
        goto out;
    }
    session_fd = move_high(pair[0]);
    session_pid = vsgx_pid;
out:
    pthread_mutex_unlock(&session_lock);
    return ret;
}

static void thread_gone(void *unused)
{
    (void)unused;
    vsgx_thread_stack_release();
    if (channel.fd >= 0 && channel.pid == vsgx_pid)
        close_internal(channel.fd);
    channel.fd = -1;
    if (channel.buffer != NULL)
        vsgx_munmap_raw(channel.buffer, RECV_BUFFER);
    channel.buffer = NULL;
}

static void make_key(void)
{
    pthread_key_create(&thread_key, thread_gone);
}

static int ensure_thread(void)
{
    if (channel.fd >= 0 && channel.pid == vsgx_pid)
        return 0;
    int ret = ensure_session();
    if (ret < 0)
        return ret;
    if (channel.buffer == NULL) {
        void *buffer = vsgx_mmap_raw(NULL, RECV_BUFFER, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (buffer == (void *)-1)
            return -ENOMEM;
        channel.buffer = buffer;
    }
    int pair[2];
    ret = new_pair(pair);
    if (ret < 0)
        return ret;
    struct vsgx_msg_thread hello = {0};
    hello.type = VSGX_MSG_THREAD;
    hello.tid = (uint32_t)vsgx_syscall(SYS_gettid, 0, 0, 0, 0, 0, 0);
    ret = send_with_fd(session_fd, &hello, sizeof(hello), pair[1]);
    vsgx_close_raw(pair[1]);
    if (ret < 0) {
        vsgx_close_raw(pair[0]);
        return ret;
    }
    channel.fd = move_high(pair[0]);
    channel.pid = vsgx_pid;
    pthread_once(&key_once, make_key);
    pthread_setspecific(thread_key, &channel);
    return 0;
}

/* Descriptors that came with a datagram: up to ``max`` into ``fds``, the
   rest closed. */
static int take_fds(struct msghdr *msg, int *fds, int max)
{
    int taken = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (taken < max)
                fds[taken++] = fd;
            else
                vsgx_close_raw(fd);
        }
    }
    return taken;
}

static int call_iov(const struct iovec *iov, int count, struct vsgx_reply *reply, int *fds,
                    int max_fds, int *fd_count)
{
    if (fd_count != NULL)
        *fd_count = 0;
    int ret = ensure_thread();
    if (ret < 0)
        return ret;
    struct msghdr msg = {0};
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)count;
    long sent;
    do
        sent = vsgx_syscall(SYS_sendmsg, channel.fd, (long)&msg, MSG_NOSIGNAL, 0, 0, 0);
    while (sent == -EINTR);
    if (sent < 0)
        return sent == -EFAULT ? -EFAULT : -EIO;
    for (;;) {
        union {
            struct cmsghdr header;
            char space[CMSG_SPACE(4 * sizeof(int))];
        } control;
        struct iovec into = {channel.buffer, RECV_BUFFER};
        struct msghdr in = {0};
        in.msg_iov = &into;
        in.msg_iovlen = 1;
        in.msg_control = control.space;
        in.msg_controllen = sizeof(control.space);
        long n;
        do
            n = vsgx_syscall(SYS_recvmsg, channel.fd, (long)&in, MSG_CMSG_CLOEXEC, 0, 0, 0);
        while (n == -EINTR);
        int taken = n > 0 && in.msg_controllen ? take_fds(&in, fds, fds != NULL ? max_fds : 0)
                                                : 0;
        if (n <= 0) {
            vsgx_log("the launcher went away (%ld)", n);
            return -EIO;
        }
        uint32_t type = 0;
        if ((size_t)n >= 8)
            memcpy(&type, channel.buffer, 4);
        if ((size_t)n < 8 || type == VSGX_MSG_PAGE_FETCH || type == VSGX_MSG_PAGE_WRITEBACK) {
            for (int i = 0; i < taken; i++)  /* not ours to keep */
                vsgx_close_raw(fds[i]);
            if ((size_t)n < 8)
                return -EIO;
            if (vsgx_serve_page_request(channel.fd, channel.buffer, (size_t)n) < 0)
                return -EIO;
            continue;
        }
        if (fd_count != NULL)
            *fd_count = taken;
        reply->data = channel.buffer;
        reply->length = (size_t)n;
        return 0;
    }
}

int vsgx_call_unflushed(const struct iovec *iov, int count, struct vsgx_reply *reply)
{
    return call_iov(iov, count, reply, NULL, 0, NULL);
}

int vsgx_call_iov(const struct iovec *iov, int count, struct vsgx_reply *reply)
{
    int ret = vsgx_maps_flush();  /* the mappings answered before go first */
    return ret < 0 ? ret : call_iov(iov, count, reply, NULL, 0, NULL);
}

int vsgx_call_fds(const void *request, size_t request_size, struct vsgx_reply *reply, int *fds,
                  int max_fds, int *count)
{
    int ret = vsgx_maps_flush();
    if (ret < 0)
        return ret;
    struct iovec iov = {(void *)request, request_size};
    return call_iov(&iov, 1, reply, fds, max_fds, count);
}

int vsgx_call(const void *request, size_t request_size, const void *payload,
              size_t payload_size, struct vsgx_reply *reply)
{
    struct iovec iov[2] = {{(void *)request, request_size}, {(void *)payload, payload_size}};
    return vsgx_call_iov(iov, payload_size ? 2 : 1, reply);
}

void vsgx_channel_after_fork(void)
{
    /* The child's copies of our sockets belong to the parent's session. */
    if (session_fd >= 0)
        close_internal(session_fd);
    session_fd = -1;
    if (channel.fd >= 0)
        close_internal(channel.fd);
    channel.fd = -1;
    /* Other threads' sockets were not copied into this process's threads,
       but their descriptors were: close them too. */
    for (int fd = 0; fd < INTERNAL_FDS; fd++)
        if (fd != control_fd && vsgx_channel_is_internal_fd(fd))
            close_internal(fd);
    pthread_mutex_init(&session_lock, NULL);
}

/* A self-starting library asks the launcher for the CPUID model it hands
   to the program (the launcher sends it first on the control socket). */
int vsgx_cpuid_model_from_launcher(void)
{
    return get_control_fd();
}
