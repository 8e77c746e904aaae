/* A program written for vsgx's tests that quotes the way DCAP applications
   do: through Intel's quote library API, linked by name (-lsgx_dcap_ql).
   The prototypes are those of Intel's sgx_dcap_ql_wrapper.h.

   usage: dcap_quote target OUT          sgx_qe_get_target_info
          dcap_quote quote REPORT OUT    sgx_qe_get_quote_size, sgx_qe_get_quote
          dcap_quote api                 the calls that load nothing: policy, paths
   Prints "ok ..." or "FAIL ... 0x...."; exit status 0 only on success. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint32_t quote3_error_t;
typedef struct { uint8_t bytes[512]; } sgx_target_info_t;
typedef struct { uint8_t bytes[432]; } sgx_report_t;

quote3_error_t sgx_qe_get_target_info(sgx_target_info_t *p_qe_target_info);
quote3_error_t sgx_qe_get_quote_size(uint32_t *p_quote_size);
quote3_error_t sgx_qe_get_quote(const sgx_report_t *p_app_report, uint32_t quote_size,
                                uint8_t *p_quote);
quote3_error_t sgx_qe_set_enclave_load_policy(uint32_t policy);
quote3_error_t sgx_qe_cleanup_by_policy(void);
quote3_error_t sgx_ql_set_path(uint32_t path_type, const char *p_path);

static int check(const char *what, quote3_error_t got, quote3_error_t want) {
    if (got != want) {
        printf("FAIL %s: 0x%04x, expected 0x%04x\n", what, got, want);
        return 1;
    }
    printf("ok %s\n", what);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "target")) {
        sgx_target_info_t target;
        if (check("sgx_qe_set_enclave_load_policy(PERSISTENT)",
                  sgx_qe_set_enclave_load_policy(0), 0) ||
            check("sgx_qe_get_target_info", sgx_qe_get_target_info(&target), 0))
            return 1;
        FILE *f = fopen(argv[2], "wb");
        if (!f || fwrite(&target, sizeof(target), 1, f) != 1 || fclose(f))
            return 1;
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "quote")) {
        sgx_report_t report;
        FILE *f = fopen(argv[2], "rb");
        if (!f || fread(&report, sizeof(report), 1, f) != 1)
            return 1;
        fclose(f);
        uint32_t size = 0;
        if (check("sgx_qe_get_quote_size", sgx_qe_get_quote_size(&size), 0))
            return 1;
        uint8_t *quote = malloc(size);
        if (!quote)
            return 1;
        if (check("sgx_qe_get_quote with a buffer too small",
                  sgx_qe_get_quote(&report, size - 1, quote), 0xE002) ||
            check("sgx_qe_get_quote", sgx_qe_get_quote(&report, size, quote), 0))
            return 1;
        sgx_report_t altered = report;
        altered.bytes[320] ^= 1;
        if (check("sgx_qe_get_quote of an altered report",
                  sgx_qe_get_quote(&altered, size, quote + 0), 0xE015)) /* INVALID_REPORT */
            return 1;
        if (check("sgx_qe_get_quote", sgx_qe_get_quote(&report, size, quote), 0))
            return 1;
        f = fopen(argv[3], "wb");
        if (!f || fwrite(quote, size, 1, f) != 1 || fclose(f))
            return 1;
        free(quote);
        return check("sgx_qe_cleanup_by_policy", sgx_qe_cleanup_by_policy(), 0);
    }
    if (argc >= 2 && !strcmp(argv[1], "api")) {
        uint32_t size;
        return check("sgx_qe_set_enclave_load_policy(EPHEMERAL)",
                     sgx_qe_set_enclave_load_policy(1), 0) |
               check("sgx_qe_set_enclave_load_policy(7)", sgx_qe_set_enclave_load_policy(7),
                     0xE00C) |
               check("sgx_ql_set_path(QE3)", sgx_ql_set_path(0, "/opt/intel/libsgx_qe3.signed.so"),
                     0) |
               check("sgx_ql_set_path(9)", sgx_ql_set_path(9, "/x"), 0xE002) |
               check("sgx_ql_set_path(NULL)", sgx_ql_set_path(1, NULL), 0xE002) |
               check("sgx_qe_get_target_info(NULL)", sgx_qe_get_target_info(NULL), 0xE002) |
               check("sgx_qe_get_quote(NULL)", sgx_qe_get_quote(NULL, 10, (uint8_t *)&size),
                     0xE002) |
               check("sgx_qe_get_quote_size without aesmd", sgx_qe_get_quote_size(&size),
                     0xE00D); /* the test points it at no socket */
    }
    fprintf(stderr, "usage: dcap_quote target OUT | quote REPORT OUT | api\n");
    return 2;
}
