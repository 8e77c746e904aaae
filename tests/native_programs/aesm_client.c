/* An aesmd client written for vsgx's tests: the wire format Intel's
   libsgx_quote_ex speaks (a 4-byte little-endian length, then a protobuf
   aesm.message.Request; one request per connection), encoded by hand.

   usage: aesm_client SOCKET target OUT          InitQuoteEx: the QE's TARGETINFO
          aesm_client SOCKET quote REPORT OUT    GetQuoteSizeEx + GetQuoteEx
          aesm_client SOCKET epid                InitQuote (EPID): prints its status
   The attestation key ID is the one GetSupportedAttKeyIDs names. Prints
   "ok ..." or "FAIL ..."; the exit status is 0 only on success. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *g_socket;

static size_t put_varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    while (v > 0x7f) {
        out[n++] = (uint8_t)(v & 0x7f) | 0x80;
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* field number, wire type 2, length, bytes */
static size_t put_bytes(uint8_t *out, unsigned field, const void *data, size_t len) {
    size_t n = put_varint(out, field << 3 | 2);
    n += put_varint(out + n, len);
    memcpy(out + n, data, len);
    return n + len;
}

static size_t put_uint(uint8_t *out, unsigned field, uint64_t value) {
    size_t n = put_varint(out, field << 3);
    return n + put_varint(out + n, value);
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end)
            return -1;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

/* Find field `want` in a message: its varint value or its bytes. */
static int field(const uint8_t *msg, size_t len, unsigned want, uint64_t *value,
                 const uint8_t **data, size_t *data_len) {
    const uint8_t *p = msg, *end = msg + len;
    while (p < end) {
        uint64_t key, v;
        if (get_varint(&p, end, &key))
            return -1;
        if ((key & 7) == 0) {
            if (get_varint(&p, end, &v))
                return -1;
            if (key >> 3 == want) {
                *value = v;
                return 0;
            }
        } else if ((key & 7) == 2) {
            if (get_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return -1;
            if (key >> 3 == want) {
                *data = p;
                *data_len = (size_t)v;
                return 0;
            }
            p += v;
        } else {
            return -1;
        }
    }
    return 1;
}

/* One request: Request{request_field: inner}; returns the response message
   in response_field (malloc'd whole response in *body) or NULL. */
static const uint8_t *ask(unsigned request_field, const uint8_t *inner, size_t inner_len,
                          unsigned response_field, uint8_t **body, size_t *msg_len) {
    static uint8_t request[8192];
    size_t len = put_bytes(request, request_field, inner, inner_len);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", g_socket);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        printf("FAIL connect %s: %s\n", g_socket, strerror(errno));
        exit(1);
    }
    uint8_t header[4] = {len & 0xff, len >> 8 & 0xff, len >> 16 & 0xff, len >> 24 & 0xff};
    if (write(fd, header, 4) != 4 || write(fd, request, len) != (ssize_t)len) {
        printf("FAIL write\n");
        exit(1);
    }
    uint32_t size = 0;
    if (recv(fd, header, 4, MSG_WAITALL) != 4) {
        printf("FAIL aesmd closed the connection\n");
        exit(1);
    }
    size = header[0] | header[1] << 8 | header[2] << 16 | (uint32_t)header[3] << 24;
    *body = malloc(size + 1);
    if (!*body || recv(fd, *body, size, MSG_WAITALL) != (ssize_t)size) {
        printf("FAIL short response\n");
        exit(1);
    }
    close(fd);
    uint64_t unused;
    const uint8_t *msg = NULL;
    if (field(*body, size, response_field, &unused, &msg, msg_len) != 0) {
        printf("FAIL no response %u\n", response_field);
        exit(1);
    }
    return msg;
}

static uint32_t error_code(const uint8_t *msg, size_t len) {
    uint64_t code = 99999;
    const uint8_t *d;
    size_t dl;
    field(msg, len, 1, &code, &d, &dl);
    return (uint32_t)code;
}

static void key_id(uint8_t out[256]) {
    uint8_t inner[16], *body;
    size_t n = put_uint(inner, 1, 256), len; /* GetSupportedAttKeyIDs{buf_size} */
    const uint8_t *msg = ask(22, inner, n, 22, &body, &len);
    const uint8_t *ids;
    size_t ids_len;
    uint64_t v;
    if (error_code(msg, len) != 0 || field(msg, len, 2, &v, &ids, &ids_len) || ids_len != 256) {
        printf("FAIL GetSupportedAttKeyIDs: status %u\n", error_code(msg, len));
        exit(1);
    }
    memcpy(out, ids, 256);
    free(body);
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f)) {
        printf("FAIL write %s\n", path);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: aesm_client SOCKET target OUT | quote REPORT OUT | epid\n");
        return 2;
    }
    g_socket = argv[1];
    uint8_t id[256], inner[8192] = {0}, *body;
    size_t n, len;
    const uint8_t *data;
    size_t data_len;
    uint64_t value;
    if (!strcmp(argv[2], "epid")) {
        const uint8_t *msg = ask(1, inner, 0, 1, &body, &len); /* InitQuote */
        printf("ok InitQuote status %u\n", error_code(msg, len));
        return error_code(msg, len) == 30 ? 0 : 1; /* AESM_SERVICE_UNAVAILABLE */
    }
    key_id(id);
    if (!strcmp(argv[2], "target") && argc == 4) {
        n = put_bytes(inner, 1, id, 256);
        n += put_uint(inner + n, 3, 1);  /* b_pub_key_id */
        n += put_uint(inner + n, 4, 32); /* buf_size */
        const uint8_t *msg = ask(15, inner, n, 15, &body, &len);
        if (error_code(msg, len) || field(msg, len, 2, &value, &data, &data_len) ||
            data_len != 512) {
            printf("FAIL InitQuoteEx: status %u\n", error_code(msg, len));
            return 1;
        }
        write_file(argv[3], data, 512);
        const uint8_t *key;
        size_t key_len;
        if (field(msg, len, 4, &value, &key, &key_len) || key_len != 32) {
            printf("FAIL InitQuoteEx: no pub_key_id\n");
            return 1;
        }
        printf("ok target info, pub key id %02x%02x...\n", key[0], key[1]);
        return 0;
    }
    if (!strcmp(argv[2], "quote") && argc == 5) {
        uint8_t report[432];
        FILE *f = fopen(argv[3], "rb");
        if (!f || fread(report, 1, sizeof(report), f) != sizeof(report)) {
            printf("FAIL read %s\n", argv[3]);
            return 1;
        }
        fclose(f);
        n = put_bytes(inner, 1, id, 256);
        const uint8_t *msg = ask(16, inner, n, 16, &body, &len);
        uint64_t size = 0;
        if (error_code(msg, len) || field(msg, len, 2, &size, &data, &data_len)) {
            printf("FAIL GetQuoteSizeEx: status %u\n", error_code(msg, len));
            return 1;
        }
        free(body);
        n = put_bytes(inner, 1, report, sizeof(report));
        n += put_bytes(inner + n, 2, id, 256);
        n += put_uint(inner + n, 4, size);
        msg = ask(17, inner, n, 17, &body, &len);
        if (error_code(msg, len) || field(msg, len, 2, &value, &data, &data_len) ||
            data_len != size) {
            printf("FAIL GetQuoteEx: status %u\n", error_code(msg, len));
            return 1;
        }
        write_file(argv[4], data, data_len);
        printf("ok quote of %zu bytes\n", data_len);
        return 0;
    }
    fprintf(stderr, "aesm_client: unknown command %s\n", argv[2]);
    return 2;
}
