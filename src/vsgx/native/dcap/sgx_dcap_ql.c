/* libsgx_dcap_ql.so.1 for vsgx: the C API of Intel's DCAP quote library
   (sgx_dcap_ql_wrapper.h) as a client of an aesmd socket, the way Intel's
   library works in out-of-process mode (SGX_AESM_ADDR set): every quote
   comes from the quoting enclave behind the socket, here vsgx's
   `vsgx aesmd serve` and the QE of its EVM.

   The socket: $VSGX_AESM_SOCKET, else /var/run/aesmd/aesm.socket (Intel's).
   The wire: a 4-byte little-endian length and a protobuf aesm.message
   Request (messages.proto of Intel's PSW), one request per connection;
   encoded and decoded by hand below (a dozen varints and byte strings).

   No enclave image is ever loaded by this library, so the loading policy
   and the paths of QE3/PCE/QPL/IDE images are accepted and have no effect. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef uint32_t quote3_error_t;
/* quote3_error_t (sgx_ql_lib_common.h). */
#define SGX_QL_SUCCESS 0x0000
#define SGX_QL_ERROR_UNEXPECTED 0xE001
#define SGX_QL_ERROR_INVALID_PARAMETER 0xE002
#define SGX_QL_ERROR_OUT_OF_MEMORY 0xE003
#define SGX_QL_ERROR_ECDSA_ID_MISMATCH 0xE004
#define SGX_QL_PATHNAME_BUFFER_OVERFLOW_ERROR 0xE005
#define SGX_QL_FILE_ACCESS_ERROR 0xE006
#define SGX_QL_ERROR_STORED_KEY 0xE007
#define SGX_QL_ERROR_PUB_KEY_ID_MISMATCH 0xE008
#define SGX_QL_ERROR_INVALID_PCE_SIG_SCHEME 0xE009
#define SGX_QL_ATT_KEY_BLOB_ERROR 0xE00A
#define SGX_QL_UNSUPPORTED_ATT_KEY_ID 0xE00B
#define SGX_QL_UNSUPPORTED_LOADING_POLICY 0xE00C
#define SGX_QL_INTERFACE_UNAVAILABLE 0xE00D
#define SGX_QL_PLATFORM_LIB_UNAVAILABLE 0xE00E
#define SGX_QL_ATT_KEY_NOT_INITIALIZED 0xE00F
#define SGX_QL_ATT_KEY_CERT_DATA_INVALID 0xE010
#define SGX_QL_NO_PLATFORM_CERT_DATA 0xE011
#define SGX_QL_OUT_OF_EPC 0xE012
#define SGX_QL_ERROR_REPORT 0xE013
#define SGX_QL_ENCLAVE_LOST 0xE014
#define SGX_QL_INVALID_REPORT 0xE015
#define SGX_QL_ENCLAVE_LOAD_ERROR 0xE016
#define SGX_QL_UNABLE_TO_GENERATE_QE_REPORT 0xE017
#define SGX_QL_KEY_CERTIFCATION_ERROR 0xE018
#define SGX_QL_NETWORK_ERROR 0xE019
#define SGX_QL_MESSAGE_ERROR 0xE01A

/* sgx_ql_request_policy_t and sgx_ql_path_type_t. */
#define SGX_QL_PERSISTENT 0
#define SGX_QL_EPHEMERAL 1
#define SGX_QL_PATH_TYPES 4 /* QE3, PCE, QPL, IDE */

#define TARGETINFO_SIZE 512
#define REPORT_SIZE 432
#define ATT_KEY_ID_SIZE 256
#define MAX_RESPONSE (16u << 20)
#define IO_SECONDS 30

/* aesm.message.Request / Response field numbers (messages.proto). */
#define REQ_INIT_QUOTE_EX 15
#define REQ_GET_QUOTE_SIZE_EX 16
#define REQ_GET_QUOTE_EX 17
#define REQ_SELECT_ATT_KEY_ID 19

/* -- protobuf, by hand ---------------------------------------------------- */
struct buf {
    uint8_t *data;
    size_t len, cap;
};

static int put(struct buf *b, const void *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + len)
            cap *= 2;
        uint8_t *grown = realloc(b->data, cap);
        if (!grown)
            return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static int put_varint(struct buf *b, uint64_t value) {
    uint8_t bytes[10];
    size_t n = 0;
    do {
        bytes[n] = value & 0x7f;
        value >>= 7;
        if (value)
            bytes[n] |= 0x80;
        n++;
    } while (value);
    return put(b, bytes, n);
}

static int put_uint(struct buf *b, uint32_t field, uint64_t value) {
    return put_varint(b, (uint64_t)field << 3) || put_varint(b, value);
}

static int put_bytes(struct buf *b, uint32_t field, const void *data, size_t len) {
    return put_varint(b, (uint64_t)field << 3 | 2) || put_varint(b, len) || put(b, data, len);
}

struct field {
    uint32_t number, wire;
    uint64_t value;
    const uint8_t *data;
    size_t len;
};

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t value = 0;
    for (int i = 0; i < 10; i++) {
        if (*p >= end)
            return -1;
        uint8_t byte = *(*p)++;
        if (i == 9 && byte > 1)
            return -1;
        value |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

/* 1: a field; 0: the end; -1: malformed. */
static int next_field(const uint8_t **p, const uint8_t *end, struct field *f) {
    uint64_t key;
    if (*p == end)
        return 0;
    if (get_varint(p, end, &key) || key >> 3 == 0 || key >> 3 > 0x1fffffff)
        return -1;
    f->number = (uint32_t)(key >> 3);
    f->wire = key & 7;
    f->data = NULL;
    f->len = 0;
    f->value = 0;
    switch (f->wire) {
    case 0:
        return get_varint(p, end, &f->value) ? -1 : 1;
    case 2:
        if (get_varint(p, end, &f->value) || f->value > (uint64_t)(end - *p))
            return -1;
        f->data = *p;
        f->len = (size_t)f->value;
        *p += f->len;
        return 1;
    case 1:
    case 5: {
        size_t size = f->wire == 1 ? 8 : 4;
        if ((size_t)(end - *p) < size)
            return -1;
        *p += size;
        return 1;
    }
    default:
        return -1;
    }
}

/* -- talking to aesmd ------------------------------------------------------ */
static const char *socket_path(void) {
    const char *path = getenv("VSGX_AESM_SOCKET");
    return path && *path ? path : "/var/run/aesmd/aesm.socket";
}

static int write_all(int fd, const void *data, size_t len) {
    const uint8_t *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *data, size_t len) {
    uint8_t *p = data;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Send a Request holding the message `inner` in field `field`; on success
   *body is the whole Response (free it) and *msg, *msg_len the response
   message in the same field; *error_code is its errorCode. */
static quote3_error_t transact(uint32_t field, const struct buf *inner, uint8_t **body,
                               const uint8_t **msg, size_t *msg_len, uint32_t *error_code) {
    struct buf request = {0};
    quote3_error_t ret = SGX_QL_ERROR_UNEXPECTED;
    int fd = -1;
    *body = NULL;
    if (put_bytes(&request, field, inner->data ? inner->data : (const uint8_t *)"", inner->len)) {
        ret = SGX_QL_ERROR_OUT_OF_MEMORY;
        goto out;
    }
    const char *path = socket_path();
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path)) {
        ret = SGX_QL_INTERFACE_UNAVAILABLE;
        goto out;
    }
    strcpy(addr.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        ret = SGX_QL_INTERFACE_UNAVAILABLE; /* no aesmd to ask */
        goto out;
    }
    struct timeval timeout = {.tv_sec = IO_SECONDS};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    uint8_t length[4] = {request.len & 0xff, request.len >> 8 & 0xff, request.len >> 16 & 0xff,
                         request.len >> 24 & 0xff};
    uint8_t header[4];
    if (write_all(fd, length, 4) || write_all(fd, request.data, request.len) ||
        read_all(fd, header, 4)) {
        ret = SGX_QL_ERROR_UNEXPECTED; /* aesmd closed the connection: it refused the request */
        goto out;
    }
    uint32_t size = header[0] | header[1] << 8 | header[2] << 16 | (uint32_t)header[3] << 24;
    if (size > MAX_RESPONSE || !(*body = malloc(size ? size : 1))) {
        ret = size > MAX_RESPONSE ? SGX_QL_ERROR_UNEXPECTED : SGX_QL_ERROR_OUT_OF_MEMORY;
        goto out;
    }
    if (read_all(fd, *body, size))
        goto out;
    const uint8_t *p = *body, *end = *body + size;
    struct field f;
    int found = 0, r;
    while ((r = next_field(&p, end, &f)) == 1) {
        if (f.number != field || f.wire != 2 || found)
            goto out; /* a response to another request, or two */
        *msg = f.data;
        *msg_len = f.len;
        found = 1;
    }
    if (r < 0 || !found)
        goto out;
    /* errorCode is field 1 of every response. */
    const uint8_t *q = *msg, *qend = *msg + *msg_len;
    int has_code = 0;
    while ((r = next_field(&q, qend, &f)) == 1)
        if (f.number == 1 && f.wire == 0 && f.value <= UINT32_MAX) {
            *error_code = (uint32_t)f.value;
            has_code = 1;
        }
    if (r < 0 || !has_code)
        goto out;
    ret = SGX_QL_SUCCESS;
out:
    if (ret != SGX_QL_SUCCESS) {
        free(*body);
        *body = NULL;
    }
    if (fd >= 0)
        close(fd);
    free(request.data);
    return ret;
}

/* aesm_error_t -> quote3_error_t (the inverse of aesmd's own mapping). */
static quote3_error_t from_aesm(uint32_t code) {
    switch (code) {
    case 0: return SGX_QL_SUCCESS;
    case 3: return SGX_QL_ERROR_INVALID_PARAMETER;
    case 12: return SGX_QL_NETWORK_ERROR;
    case 15: return SGX_QL_FILE_ACCESS_ERROR;
    case 21: return SGX_QL_ERROR_OUT_OF_MEMORY;
    case 22: return SGX_QL_MESSAGE_ERROR;
    case 29: return SGX_QL_OUT_OF_EPC;
    case 30: return SGX_QL_INTERFACE_UNAVAILABLE; /* AESM_SERVICE_UNAVAILABLE */
    case 32: return SGX_QL_ERROR_ECDSA_ID_MISMATCH;
    case 33: return SGX_QL_PATHNAME_BUFFER_OVERFLOW_ERROR;
    case 34: return SGX_QL_ERROR_STORED_KEY;
    case 35: return SGX_QL_ERROR_PUB_KEY_ID_MISMATCH;
    case 36: return SGX_QL_ERROR_INVALID_PCE_SIG_SCHEME;
    case 37: return SGX_QL_ATT_KEY_BLOB_ERROR;
    case 38: return SGX_QL_UNSUPPORTED_ATT_KEY_ID;
    case 39: return SGX_QL_UNSUPPORTED_LOADING_POLICY;
    case 40: return SGX_QL_INTERFACE_UNAVAILABLE;
    case 41: return SGX_QL_PLATFORM_LIB_UNAVAILABLE;
    case 42: return SGX_QL_ATT_KEY_NOT_INITIALIZED;
    case 43: return SGX_QL_ATT_KEY_CERT_DATA_INVALID;
    case 44: return SGX_QL_NO_PLATFORM_CERT_DATA;
    case 45: return SGX_QL_ERROR_REPORT;
    case 46: return SGX_QL_ENCLAVE_LOST;
    case 47: return SGX_QL_INVALID_REPORT;
    case 48: return SGX_QL_ENCLAVE_LOAD_ERROR;
    case 49: return SGX_QL_UNABLE_TO_GENERATE_QE_REPORT;
    case 50: return SGX_QL_KEY_CERTIFCATION_ERROR;
    default: return SGX_QL_ERROR_UNEXPECTED;
    }
}

/* Find field `number` (bytes or varint) in a response message. */
static int find(const uint8_t *msg, size_t len, uint32_t number, struct field *out) {
    const uint8_t *p = msg, *end = msg + len;
    struct field f;
    int r;
    while ((r = next_field(&p, end, &f)) == 1)
        if (f.number == number) {
            *out = f;
            return 1;
        }
    return 0;
}

/* The attestation key ID aesmd selects (cached: one QE behind one socket). */
static pthread_mutex_t key_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t key_id[ATT_KEY_ID_SIZE];
static int have_key_id;

static quote3_error_t att_key_id(uint8_t out[ATT_KEY_ID_SIZE]) {
    quote3_error_t ret = SGX_QL_SUCCESS;
    pthread_mutex_lock(&key_lock);
    if (!have_key_id) {
        struct buf none = {0};
        uint8_t *body;
        const uint8_t *msg;
        size_t len;
        uint32_t code;
        ret = transact(REQ_SELECT_ATT_KEY_ID, &none, &body, &msg, &len, &code);
        if (ret == SGX_QL_SUCCESS) {
            struct field f;
            ret = from_aesm(code);
            if (ret == SGX_QL_SUCCESS) {
                if (find(msg, len, 2, &f) && f.wire == 2 && f.len == ATT_KEY_ID_SIZE) {
                    memcpy(key_id, f.data, ATT_KEY_ID_SIZE);
                    have_key_id = 1;
                } else {
                    ret = SGX_QL_ERROR_UNEXPECTED;
                }
            }
            free(body);
        }
    }
    if (ret == SGX_QL_SUCCESS)
        memcpy(out, key_id, ATT_KEY_ID_SIZE);
    pthread_mutex_unlock(&key_lock);
    return ret;
}

/* -- the DCAP quote library's API ------------------------------------------- */
EXPORT quote3_error_t sgx_qe_get_target_info(void *p_qe_target_info) {
    if (!p_qe_target_info)
        return SGX_QL_ERROR_INVALID_PARAMETER;
    uint8_t id[ATT_KEY_ID_SIZE];
    quote3_error_t ret = att_key_id(id);
    if (ret)
        return ret;
    struct buf inner = {0};
    if (put_bytes(&inner, 1, id, sizeof(id)) || put_uint(&inner, 3, 0)) { /* b_pub_key_id */
        free(inner.data);
        return SGX_QL_ERROR_OUT_OF_MEMORY;
    }
    uint8_t *body;
    const uint8_t *msg;
    size_t len;
    uint32_t code;
    ret = transact(REQ_INIT_QUOTE_EX, &inner, &body, &msg, &len, &code);
    free(inner.data);
    if (ret)
        return ret;
    struct field f;
    ret = from_aesm(code);
    if (ret == SGX_QL_SUCCESS) {
        if (find(msg, len, 2, &f) && f.wire == 2 && f.len == TARGETINFO_SIZE)
            memcpy(p_qe_target_info, f.data, TARGETINFO_SIZE);
        else
            ret = SGX_QL_ERROR_UNEXPECTED;
    }
    free(body);
    return ret;
}

EXPORT quote3_error_t sgx_qe_get_quote_size(uint32_t *p_quote_size) {
    if (!p_quote_size)
        return SGX_QL_ERROR_INVALID_PARAMETER;
    uint8_t id[ATT_KEY_ID_SIZE];
    quote3_error_t ret = att_key_id(id);
    if (ret)
        return ret;
    struct buf inner = {0};
    if (put_bytes(&inner, 1, id, sizeof(id))) {
        free(inner.data);
        return SGX_QL_ERROR_OUT_OF_MEMORY;
    }
    uint8_t *body;
    const uint8_t *msg;
    size_t len;
    uint32_t code;
    ret = transact(REQ_GET_QUOTE_SIZE_EX, &inner, &body, &msg, &len, &code);
    free(inner.data);
    if (ret)
        return ret;
    struct field f;
    ret = from_aesm(code);
    if (ret == SGX_QL_SUCCESS) {
        if (find(msg, len, 2, &f) && f.wire == 0 && f.value && f.value <= UINT32_MAX)
            *p_quote_size = (uint32_t)f.value;
        else
            ret = SGX_QL_ERROR_UNEXPECTED;
    }
    free(body);
    return ret;
}

EXPORT quote3_error_t sgx_qe_get_quote(const void *p_app_report, uint32_t quote_size,
                                       uint8_t *p_quote) {
    if (!p_app_report || !p_quote || !quote_size)
        return SGX_QL_ERROR_INVALID_PARAMETER;
    uint8_t id[ATT_KEY_ID_SIZE];
    quote3_error_t ret = att_key_id(id);
    if (ret)
        return ret;
    struct buf inner = {0};
    if (put_bytes(&inner, 1, p_app_report, REPORT_SIZE) || put_bytes(&inner, 2, id, sizeof(id)) ||
        put_uint(&inner, 4, quote_size)) {
        free(inner.data);
        return SGX_QL_ERROR_OUT_OF_MEMORY;
    }
    uint8_t *body;
    const uint8_t *msg;
    size_t len;
    uint32_t code;
    ret = transact(REQ_GET_QUOTE_EX, &inner, &body, &msg, &len, &code);
    free(inner.data);
    if (ret)
        return ret;
    struct field f;
    ret = from_aesm(code);
    if (ret == SGX_QL_SUCCESS) {
        if (find(msg, len, 2, &f) && f.wire == 2 && f.len && f.len <= quote_size) {
            memcpy(p_quote, f.data, f.len);
            memset(p_quote + f.len, 0, quote_size - f.len);
        } else {
            ret = SGX_QL_ERROR_UNEXPECTED;
        }
    }
    free(body);
    return ret;
}

EXPORT quote3_error_t sgx_qe_set_enclave_load_policy(uint32_t policy) {
    /* Nothing is loaded here: both policies are honoured trivially. */
    return policy == SGX_QL_PERSISTENT || policy == SGX_QL_EPHEMERAL
               ? SGX_QL_SUCCESS
               : SGX_QL_UNSUPPORTED_LOADING_POLICY;
}

EXPORT quote3_error_t sgx_qe_cleanup_by_policy(void) {
    pthread_mutex_lock(&key_lock);
    have_key_id = 0; /* the next call asks aesmd again */
    pthread_mutex_unlock(&key_lock);
    return SGX_QL_SUCCESS;
}

EXPORT quote3_error_t sgx_ql_set_path(uint32_t path_type, const char *p_path) {
    if (path_type >= SGX_QL_PATH_TYPES || !p_path)
        return SGX_QL_ERROR_INVALID_PARAMETER;
    if (strnlen(p_path, PATH_MAX) >= PATH_MAX)
        return SGX_QL_PATHNAME_BUFFER_OVERFLOW_ERROR;
    return SGX_QL_SUCCESS; /* no QE3/PCE/QPL/IDE image is loaded by this library */
}
