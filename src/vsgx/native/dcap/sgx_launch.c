/* vsgx's drop-in for Intel's libsgx_launch.so.1: get_launch_token(), which
   libsgx_enclave_common dlopens to INIT an enclave on /dev/isgx whose
   SIGSTRUCT has hw_version 0, as a client of an aesmd socket: one
   GetLaunchToken request (psw/ae/aesm_service messages.proto: mr_enclave =
   ENCLAVEHASH, mr_signer = the signer's modulus, se_attributes = the SECS
   attributes and XFRM), answered by the launch enclave of vsgx's EVM.

   The socket: $VSGX_AESM_SOCKET, else /var/run/aesmd/aesm.socket (Intel's).
   Statuses as Intel's uae client maps aesmd's (oal_map_result and its
   GetLaunchToken cases): no aesmd is SGX_ERROR_SERVICE_UNAVAILABLE, a token
   the launch enclave refuses SGX_ERROR_SERVICE_INVALID_PRIVILEGE. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
typedef uint32_t sgx_status_t;

#define SGX_SUCCESS 0x0000
#define SGX_ERROR_UNEXPECTED 0x0001
#define SGX_ERROR_INVALID_PARAMETER 0x0002
#define SGX_ERROR_OUT_OF_MEMORY 0x0003
#define SGX_ERROR_OUT_OF_EPC 0x2005
#define SGX_ERROR_NO_DEVICE 0x2006
#define SGX_ERROR_SERVICE_UNAVAILABLE 0x4001
#define SGX_ERROR_SERVICE_TIMEOUT 0x4002
#define SGX_ERROR_SERVICE_INVALID_PRIVILEGE 0x4004

/* aesm_error_t */
#define AESM_SUCCESS 0
#define AESM_NO_DEVICE_ERROR 2
#define AESM_PARAMETER_ERROR 3
#define AESM_GET_LICENSETOKEN_ERROR 6
#define AESM_OUT_OF_MEMORY_ERROR 21
#define AESM_OUT_OF_EPC 29
#define AESM_SERVICE_UNAVAILABLE 30

#define CSS_MODULUS 128       /* enclave_css_t.key.modulus, 384 bytes */
#define CSS_ENCLAVE_HASH 960  /* enclave_css_t.body.enclave_hash, 32 bytes */
#define LAUNCH_TOKEN_SIZE 1024  /* sgx_launch_token_t */
#define GET_LICENSE_TOKEN 3     /* Request.getLicTokenReq / Response.getLicTokenRes */
#define IO_SECONDS 30
#define MAX_RESPONSE 4096

static size_t put_varint(uint8_t *out, uint64_t value)
{
    size_t n = 0;
    for (; value > 0x7f; value >>= 7)
        out[n++] = (uint8_t)(value & 0x7f) | 0x80;
    out[n++] = (uint8_t)value;
    return n;
}

static size_t put_bytes(uint8_t *out, unsigned number, const void *data, size_t length)
{
    size_t n = put_varint(out, (uint64_t)number << 3 | 2);
    n += put_varint(out + n, length);
    memcpy(out + n, data, length);
    return n + length;
}

/* One field of a message: 1 and its varint or bytes, 0 at the end, -1 if
   malformed (only varints and byte strings appear in these messages). */
static int next_field(const uint8_t **p, const uint8_t *end, unsigned *number, uint64_t *value,
                      const uint8_t **data)
{
    if (*p == end)
        return 0;
    uint64_t key = 0, v = 0;
    for (int pass = 0; pass < 2; pass++) {
        uint64_t *out = pass ? &v : &key;
        int shift = 0;
        for (;;) {
            if (*p == end || shift > 63)
                return -1;
            uint8_t byte = *(*p)++;
            *out |= (uint64_t)(byte & 0x7f) << shift;
            shift += 7;
            if (!(byte & 0x80))
                break;
        }
        if (pass == 0 && (key & 7) != 0 && (key & 7) != 2)
            return -1;
    }
    *number = (unsigned)(key >> 3);
    *value = v;
    *data = NULL;
    if ((key & 7) == 2) {
        if (v > (uint64_t)(end - *p))
            return -1;
        *data = *p;
        *p += v;
    }
    return 1;
}

static int write_all(int fd, const uint8_t *data, size_t length)
{
    while (length) {
        ssize_t n = write(fd, data, length);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, uint8_t *data, size_t length)
{
    while (length) {
        ssize_t n = read(fd, data, length);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        length -= (size_t)n;
    }
    return 0;
}

static sgx_status_t from_aesm(uint64_t code)
{
    switch (code) {
    case AESM_SUCCESS: return SGX_SUCCESS;
    case AESM_PARAMETER_ERROR: return SGX_ERROR_INVALID_PARAMETER;
    case AESM_OUT_OF_MEMORY_ERROR: return SGX_ERROR_OUT_OF_MEMORY;
    case AESM_SERVICE_UNAVAILABLE: return SGX_ERROR_SERVICE_UNAVAILABLE;
    case AESM_NO_DEVICE_ERROR: return SGX_ERROR_NO_DEVICE;
    case AESM_GET_LICENSETOKEN_ERROR: return SGX_ERROR_SERVICE_INVALID_PRIVILEGE;
    case AESM_OUT_OF_EPC: return SGX_ERROR_OUT_OF_EPC;
    default: return SGX_ERROR_UNEXPECTED;
    }
}

EXPORT sgx_status_t get_launch_token(const void *signature, const void *attributes,
                                     void *launch_token)
{
    if (signature == NULL || attributes == NULL || launch_token == NULL)
        return SGX_ERROR_INVALID_PARAMETER;
    uint8_t inner[512], request[4 + 520];
    size_t n = put_bytes(inner, 1, (const uint8_t *)signature + CSS_ENCLAVE_HASH, 32);
    n += put_bytes(inner + n, 2, (const uint8_t *)signature + CSS_MODULUS, 384);
    n += put_bytes(inner + n, 3, attributes, 16);
    size_t length = put_bytes(request + 4, GET_LICENSE_TOKEN, inner, n);
    for (int i = 0; i < 4; i++)
        request[i] = (uint8_t)(length >> (8 * i));

    const char *path = getenv("VSGX_AESM_SOCKET");
    if (path == NULL || path[0] == '\0')
        path = "/var/run/aesmd/aesm.socket";
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(address.sun_path))
        return SGX_ERROR_SERVICE_UNAVAILABLE;
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return SGX_ERROR_OUT_OF_MEMORY;
    if (connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
        close(fd);
        return SGX_ERROR_SERVICE_UNAVAILABLE;  /* no aesmd */
    }
    struct timeval timeout = {.tv_sec = IO_SECONDS};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    uint8_t header[4], body[MAX_RESPONSE];
    sgx_status_t status = SGX_ERROR_UNEXPECTED;  /* aesmd closed the connection */
    if (write_all(fd, request, 4 + length) || read_all(fd, header, 4))
        goto out;
    uint32_t size = header[0] | header[1] << 8 | header[2] << 16 | (uint32_t)header[3] << 24;
    if (size > sizeof(body) || read_all(fd, body, size))
        goto out;
    const uint8_t *p = body, *end = body + size, *data, *response = NULL;
    size_t response_length = 0;
    unsigned number;
    uint64_t value;
    int r;
    while ((r = next_field(&p, end, &number, &value, &data)) == 1)
        if (number == GET_LICENSE_TOKEN && data != NULL) {
            response = data;
            response_length = (size_t)value;
        }
    if (r < 0 || response == NULL)
        goto out;
    uint64_t code = AESM_SERVICE_UNAVAILABLE + 1000;  /* none: unexpected */
    const uint8_t *token = NULL;
    size_t token_length = 0;
    p = response;
    end = response + response_length;
    while ((r = next_field(&p, end, &number, &value, &data)) == 1) {
        if (number == 1 && data == NULL)
            code = value;
        else if (number == 2 && data != NULL) {
            token = data;
            token_length = (size_t)value;
        }
    }
    if (r < 0)
        goto out;
    status = from_aesm(code);
    if (status == SGX_SUCCESS) {
        if (token == NULL || token_length > LAUNCH_TOKEN_SIZE) {
            status = SGX_ERROR_UNEXPECTED;
            goto out;
        }
        memset(launch_token, 0, LAUNCH_TOKEN_SIZE);
        memcpy(launch_token, token, token_length);
    }
out:
    close(fd);
    return status;
}
