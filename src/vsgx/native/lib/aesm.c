/* aesmd for the program: Intel's clients have its socket's path compiled
   in (libsgx_launch and libsgx_quote_ex: /var/run/aesmd/aesm.socket; PSW
   1.x: the abstract name sgx_aesm_socket_base). A connect() to either
   reaches the service `vsgx exec` runs for the program
   ($VSGX_AESM_SOCKET); with no such variable it goes where it was aimed. */
#include "vsgx_exec.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

static int (*real_connect)(int, const struct sockaddr *, socklen_t);

static const char AESM_PATHS[][32] = {"/var/run/aesmd/aesm.socket", "/run/aesmd/aesm.socket"};
static const char AESM_ABSTRACT[] = "sgx_aesm_socket_base";

static int is_aesm_address(const struct sockaddr *addr, socklen_t length)
{
    if (addr == NULL || length <= offsetof(struct sockaddr_un, sun_path) ||
        addr->sa_family != AF_UNIX)
        return 0;
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    size_t path_length = length - offsetof(struct sockaddr_un, sun_path);
    if (path_length > sizeof(un->sun_path))
        path_length = sizeof(un->sun_path);
    if (un->sun_path[0] == '\0')  /* abstract: the name, padded with NULs or not */
        return path_length > sizeof(AESM_ABSTRACT) - 1 &&
               !memcmp(un->sun_path + 1, AESM_ABSTRACT, sizeof(AESM_ABSTRACT) - 1) &&
               (path_length == sizeof(AESM_ABSTRACT) ||
                un->sun_path[sizeof(AESM_ABSTRACT)] == '\0');
    for (size_t i = 0; i < sizeof(AESM_PATHS) / sizeof(AESM_PATHS[0]); i++)
        if (strnlen(un->sun_path, path_length) == strlen(AESM_PATHS[i]) &&
            !strncmp(un->sun_path, AESM_PATHS[i], path_length))
            return 1;
    return 0;
}

VSGX_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t length)
{
    if (real_connect == NULL)
        real_connect = (int (*)(int, const struct sockaddr *, socklen_t))vsgx_real("connect");
    const char *ours = getenv("VSGX_AESM_SOCKET");
    if (ours != NULL && ours[0] == '/' && is_aesm_address(addr, length)) {
        struct sockaddr_un target = {0};
        size_t n = strlen(ours);
        if (n < sizeof(target.sun_path)) {
            target.sun_family = AF_UNIX;
            memcpy(target.sun_path, ours, n);
            vsgx_log("connect to aesmd goes to %s", ours);
            return real_connect(fd, (const struct sockaddr *)&target,
                                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1));
        }
    }
    return real_connect(fd, addr, length);
}
