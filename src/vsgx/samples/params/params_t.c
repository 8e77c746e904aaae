/* Trusted bridges and OCALL proxies for params.edl, written by hand in the
   form Intel's edger8r generates: the ms struct checked outside the
   enclave (CHECK_REF_POINTER), every [in] buffer copied in, every [out]
   buffer zeroed inside and copied back, [user_check] pointers passed as
   they are, strings checked against the length the untrusted side gave,
   and SDK 1.x's [sizefunc] measured with the enclave's own function, then
   measured again on the copy (sgx_1.9 CodeGen.ml). ECALL and OCALL numbers
   are edger8r's: the enclave's own functions, then the imports in order. */
#include "params_t.h"

#define MAX_COPY (1u << 24) /* what this enclave's heap can take */

#define CHECK_REF_POINTER(p, size)                                                     \
    do {                                                                               \
        if (!(p) || !sgx_is_outside_enclave((p), (size)))                              \
            return SGX_ERROR_INVALID_PARAMETER;                                         \
    } while (0)

/* An [in] (copy) or [out] (zeroed) buffer inside the enclave; NULL stays NULL. */
static sgx_status_t enclave_copy(const void *untrusted, size_t size, int copy, void **out)
{
    *out = 0;
    if (!untrusted)
        return SGX_SUCCESS;
    if (size > MAX_COPY || !sgx_is_outside_enclave(untrusted, size))
        return SGX_ERROR_INVALID_PARAMETER;
    *out = malloc(size ? size : 1);
    if (!*out)
        return SGX_ERROR_OUT_OF_MEMORY;
    if (copy)
        memcpy(*out, untrusted, size);
    else
        memset(*out, 0, size);
    return SGX_SUCCESS;
}

static void copy_back(void *untrusted, const void *copy, size_t size)
{
    if (untrusted && copy)
        memcpy(untrusted, copy, size);
}

static size_t wide_length(const wchar_t *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* An [in] string of `len` bytes (the untrusted side's strlen + 1): it
   must end in its terminator and hold no earlier one. */
static sgx_status_t string_in(const void *untrusted, size_t len, size_t unit, void **out)
{
    *out = 0;
    if (!untrusted)
        return len ? SGX_ERROR_INVALID_PARAMETER : SGX_SUCCESS;
    if (len < unit || len % unit)
        return SGX_ERROR_INVALID_PARAMETER;
    sgx_status_t status = enclave_copy(untrusted, len, 1, out);
    if (status)
        return status;
    size_t chars = unit == 1 ? strlen(*out) + 1 : wide_length(*out) + 1;
    if (chars * unit != len) {
        free(*out);
        *out = 0;
        return SGX_ERROR_INVALID_PARAMETER;
    }
    return SGX_SUCCESS;
}

#define BRIDGE(name) static sgx_status_t sgx_##name(void *pms)
#define MS(name)                                                                       \
    CHECK_REF_POINTER(pms, sizeof(ms_##name##_t));                                     \
    ms_##name##_t *ms = pms

/* -- types ----------------------------------------------------------------- */
BRIDGE(ecall_type_char) { MS(ecall_type_char); ms->ms_retval = ecall_type_char(ms->ms_val); return 0; }
BRIDGE(ecall_type_int) { MS(ecall_type_int); ms->ms_retval = ecall_type_int(ms->ms_val); return 0; }
BRIDGE(ecall_type_float) { MS(ecall_type_float); ms->ms_retval = ecall_type_float(ms->ms_val); return 0; }
BRIDGE(ecall_type_double) { MS(ecall_type_double); ms->ms_retval = ecall_type_double(ms->ms_val); return 0; }
BRIDGE(ecall_type_size_t) { MS(ecall_type_size_t); ms->ms_retval = ecall_type_size_t(ms->ms_val); return 0; }
BRIDGE(ecall_type_wchar_t) { MS(ecall_type_wchar_t); ms->ms_retval = ecall_type_wchar_t(ms->ms_val); return 0; }
BRIDGE(ecall_type_struct) { MS(ecall_type_struct); ms->ms_retval = ecall_type_struct(ms->ms_val); return 0; }

BRIDGE(ecall_type_enum_union)
{
    MS(ecall_type_enum_union);
    ms->ms_retval = ecall_type_enum_union(ms->ms_val1, ms->ms_val2); /* [user_check] */
    return SGX_SUCCESS;
}

BRIDGE(ecall_type_struct_return)
{
    MS(ecall_type_struct_return);
    ms->ms_retval = ecall_type_struct_return(ms->ms_a, ms->ms_b);
    return SGX_SUCCESS;
}

BRIDGE(ecall_type_mixed)
{
    MS(ecall_type_mixed);
    ms->ms_retval = ecall_type_mixed(ms->ms_a, ms->ms_b, ms->ms_c, ms->ms_d);
    return SGX_SUCCESS;
}

/* -- pointers --------------------------------------------------------------- */
BRIDGE(ecall_pointer_user_check)
{
    MS(ecall_pointer_user_check);
    ms->ms_retval = ecall_pointer_user_check(ms->ms_val, ms->ms_sz);
    return SGX_SUCCESS;
}

/* One int behind a pointer: [in] (copy), [out] (zeroed), [in, out]. */
static sgx_status_t int_pointer(int *untrusted, int copy, int back, int *ret,
                                int (*in_fn)(int *), void (*fn)(int *))
{
    void *local;
    sgx_status_t status = enclave_copy(untrusted, sizeof(int), copy, &local);
    if (status)
        return status;
    if (in_fn)
        *ret = in_fn(local);
    else
        fn(local);
    if (back)
        copy_back(untrusted, local, sizeof(int));
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_in)
{
    MS(ecall_pointer_in);
    int ret = 0;
    sgx_status_t status = int_pointer(ms->ms_val, 1, 0, &ret, ecall_pointer_in, 0);
    ms->ms_retval = ret;
    return status;
}
BRIDGE(ecall_pointer_out) { MS(ecall_pointer_out); return int_pointer(ms->ms_val, 0, 1, 0, 0, ecall_pointer_out); }
BRIDGE(ecall_pointer_in_out) { MS(ecall_pointer_in_out); return int_pointer(ms->ms_val, 1, 1, 0, 0, ecall_pointer_in_out); }

BRIDGE(ecall_pointer_string)
{
    MS(ecall_pointer_string);
    char *untrusted = ms->ms_str;
    size_t len = ms->ms_str_len;
    void *str;
    sgx_status_t status = string_in(untrusted, len, 1, &str);
    if (status)
        return status;
    ecall_pointer_string(str);
    if (str) {
        size_t now = strlen(str) + 1; /* [in, out, string]: never more than came in */
        copy_back(untrusted, str, now < len ? now : len);
    }
    free(str);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_string_const)
{
    MS(ecall_pointer_string_const);
    void *str;
    sgx_status_t status = string_in(ms->ms_str, ms->ms_str_len, 1, &str);
    if (status)
        return status;
    ms->ms_retval = ecall_pointer_string_const(str);
    free(str);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_wstring)
{
    MS(ecall_pointer_wstring);
    void *str;
    sgx_status_t status = string_in(ms->ms_str, ms->ms_str_len, sizeof(wchar_t), &str);
    if (status)
        return status;
    ms->ms_retval = ecall_pointer_wstring(str);
    free(str);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_size)
{
    MS(ecall_pointer_size);
    void *untrusted = ms->ms_ptr, *local;
    size_t len = ms->ms_len;
    sgx_status_t status = enclave_copy(untrusted, len, 1, &local);
    if (status)
        return status;
    ecall_pointer_size(local, len);
    copy_back(untrusted, local, len);
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_count)
{
    MS(ecall_pointer_count);
    int *untrusted = ms->ms_arr;
    size_t cnt = ms->ms_cnt;
    void *local;
    if (cnt > MAX_COPY / sizeof(int)) /* count * sizeof must not overflow */
        return SGX_ERROR_INVALID_PARAMETER;
    sgx_status_t status = enclave_copy(untrusted, cnt * sizeof(int), 1, &local);
    if (status)
        return status;
    ecall_pointer_count(local, cnt);
    copy_back(untrusted, local, cnt * sizeof(int));
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_isptr_readonly)
{
    MS(ecall_pointer_isptr_readonly);
    void *local;
    sgx_status_t status = enclave_copy(ms->ms_buf, ms->ms_len, 1, &local);
    if (status)
        return status;
    ms->ms_retval = ecall_pointer_isptr_readonly(local, ms->ms_len);
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_isptr_out)
{
    MS(ecall_pointer_isptr_out);
    buffer_t untrusted = ms->ms_buf;
    size_t len = ms->ms_len;
    void *local;
    sgx_status_t status = enclave_copy(untrusted, len, 0, &local);
    if (status)
        return status;
    ecall_pointer_isptr_out(local, len);
    copy_back(untrusted, local, len);
    free(local);
    return SGX_SUCCESS;
}

/* SDK 1.x [sizefunc = get_buffer_len, in, out]: the size comes from the
   enclave's function applied to the untrusted buffer, and must be the same
   on the copy (the check sgx_1.9's edger8r generates). */
BRIDGE(ecall_pointer_sizefunc)
{
    MS(ecall_pointer_sizefunc);
    char *untrusted = ms->ms_buf;
    void *local;
    size_t len = 0;
    if (untrusted) {
        if (!sgx_is_outside_enclave(untrusted, sizeof(uint32_t)))
            return SGX_ERROR_INVALID_PARAMETER;
        len = get_buffer_len(untrusted);
    }
    sgx_status_t status = enclave_copy(untrusted, len, 1, &local);
    if (status)
        return status;
    if (local && get_buffer_len(local) != len) {
        free(local);
        return SGX_ERROR_INVALID_PARAMETER;
    }
    ecall_pointer_sizefunc(local);
    copy_back(untrusted, local, len);
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_struct)
{
    MS(ecall_pointer_struct);
    struct struct_foo_t *untrusted = ms->ms_foo;
    void *local;
    sgx_status_t status = enclave_copy(untrusted, sizeof(*untrusted), 1, &local);
    if (status)
        return status;
    ms->ms_retval = ecall_pointer_struct(local);
    copy_back(untrusted, local, sizeof(*untrusted));
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_pointer_size_count)
{
    MS(ecall_pointer_size_count);
    size_t sz = ms->ms_sz, n = ms->ms_n;
    void *local;
    if (sz && n > MAX_COPY / sz)
        return SGX_ERROR_INVALID_PARAMETER;
    sgx_status_t status = enclave_copy(ms->ms_items, sz * n, 1, &local);
    if (status)
        return status;
    ms->ms_retval = ecall_pointer_size_count(local, sz, n);
    free(local);
    return SGX_SUCCESS;
}

/* -- arrays ------------------------------------------------------------------- */
static sgx_status_t int_array(int *untrusted, size_t count, int copy, int back, int *ret,
                              int (*in_fn)(int *), void (*fn)(int *))
{
    void *local;
    sgx_status_t status = enclave_copy(untrusted, count * sizeof(int), copy, &local);
    if (status)
        return status;
    if (in_fn)
        *ret = in_fn(local);
    else
        fn(local);
    if (back)
        copy_back(untrusted, local, count * sizeof(int));
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_array_user_check)
{
    MS(ecall_array_user_check);
    ms->ms_retval = ecall_array_user_check(ms->ms_arr);
    return SGX_SUCCESS;
}

BRIDGE(ecall_array_in)
{
    MS(ecall_array_in);
    int ret = 0;
    sgx_status_t status = int_array(ms->ms_arr, 4, 1, 0, &ret, ecall_array_in, 0);
    ms->ms_retval = ret;
    return status;
}
BRIDGE(ecall_array_out) { MS(ecall_array_out); return int_array(ms->ms_arr, 4, 0, 1, 0, 0, ecall_array_out); }
BRIDGE(ecall_array_in_out) { MS(ecall_array_in_out); return int_array(ms->ms_arr, 4, 1, 1, 0, 0, ecall_array_in_out); }

/* [user_check, isary] array_t: the bridge passes *ms_arr (the array). */
BRIDGE(ecall_array_isary)
{
    MS(ecall_array_isary);
    ms->ms_retval = ecall_array_isary(ms->ms_arr ? *ms->ms_arr : 0);
    return SGX_SUCCESS;
}

BRIDGE(ecall_array_isary_in)
{
    MS(ecall_array_isary_in);
    void *local;
    sgx_status_t status = enclave_copy(ms->ms_arr, sizeof(array_t), 1, &local);
    if (status)
        return status;
    ms->ms_retval = ecall_array_isary_in(local ? *(array_t *)local : 0);
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_array_isary_out)
{
    MS(ecall_array_isary_out);
    array_t *untrusted = ms->ms_arr;
    void *local;
    sgx_status_t status = enclave_copy(untrusted, sizeof(array_t), 0, &local);
    if (status)
        return status;
    ecall_array_isary_out(local ? *(array_t *)local : 0);
    copy_back(untrusted, local, sizeof(array_t));
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(ecall_array_2d)
{
    MS(ecall_array_2d);
    int *untrusted = ms->ms_arr;
    void *local;
    sgx_status_t status = enclave_copy(untrusted, 6 * sizeof(int), 1, &local);
    if (status)
        return status;
    ecall_array_2d((int (*)[3])local);
    copy_back(untrusted, local, 6 * sizeof(int));
    free(local);
    return SGX_SUCCESS;
}

/* -- functions ------------------------------------------------------------------ */
BRIDGE(ecall_function_public) { MS(ecall_function_public); ms->ms_retval = ecall_function_public(ms->ms_x); return 0; }
BRIDGE(ecall_function_private) { MS(ecall_function_private); ms->ms_retval = ecall_function_private(ms->ms_x); return 0; }
BRIDGE(ecall_ocalls) { MS(ecall_ocalls); ms->ms_retval = ecall_ocalls(); return 0; }

/* -- the standard EDLs' ECALLs ----------------------------------------------------- */
BRIDGE(sl_init_switchless) { MS(sl_init_switchless); ms->ms_retval = sl_init_switchless(ms->ms_sl_data); return 0; }

static sgx_status_t sgx_sl_run_switchless_tworker(void *pms)
{
    CHECK_REF_POINTER(pms, sizeof(ms_sl_run_switchless_tworker_t));
    ((ms_sl_run_switchless_tworker_t *)pms)->ms_retval = sl_run_switchless_tworker();
    return SGX_SUCCESS;
}

BRIDGE(sgx_ra_get_ga)
{
    MS(sgx_ra_get_ga);
    sgx_ec256_public_t *untrusted = ms->ms_g_a;
    void *local;
    sgx_status_t status = enclave_copy(untrusted, sizeof(*untrusted), 0, &local);
    if (status)
        return status;
    ms->ms_retval = sgx_ra_get_ga(ms->ms_context, local);
    copy_back(untrusted, local, sizeof(*untrusted));
    free(local);
    return SGX_SUCCESS;
}

BRIDGE(sgx_ra_proc_msg2_trusted)
{
    MS(sgx_ra_proc_msg2_trusted);
    ms_sgx_ra_proc_msg2_trusted_t in = *ms;
    void *msg2 = 0, *target = 0, *report = 0, *nonce = 0;
    sgx_status_t status = enclave_copy(in.ms_p_msg2, sizeof(sgx_ra_msg2_t), 1, &msg2);
    if (!status)
        status = enclave_copy(in.ms_p_qe_target, sizeof(sgx_target_info_t), 1, &target);
    if (!status)
        status = enclave_copy(in.ms_p_report, sizeof(sgx_report_t), 0, &report);
    if (!status)
        status = enclave_copy(in.ms_p_nonce, sizeof(sgx_quote_nonce_t), 0, &nonce);
    if (!status) {
        ms->ms_retval = sgx_ra_proc_msg2_trusted(in.ms_context, msg2, target, report, nonce);
        copy_back(in.ms_p_report, report, sizeof(sgx_report_t));
        copy_back(in.ms_p_nonce, nonce, sizeof(sgx_quote_nonce_t));
    }
    free(msg2);
    free(target);
    free(report);
    free(nonce);
    return status;
}

BRIDGE(sgx_ra_get_msg3_trusted)
{
    MS(sgx_ra_get_msg3_trusted);
    ms_sgx_ra_get_msg3_trusted_t in = *ms;
    void *report;
    sgx_status_t status = enclave_copy(in.ms_qe_report, sizeof(sgx_report_t), 1, &report);
    if (status)
        return status;
    ms->ms_retval = sgx_ra_get_msg3_trusted(in.ms_context, in.ms_quote_size, report,
                                            in.ms_p_msg3, in.ms_msg3_size);
    free(report);
    return SGX_SUCCESS;
}

BRIDGE(sgx_tvl_verify_qve_report_and_identity)
{
    MS(sgx_tvl_verify_qve_report_and_identity);
    ms_sgx_tvl_verify_qve_report_and_identity_t in = *ms;
    void *quote = 0, *info = 0, *supplemental = 0;
    sgx_status_t status = enclave_copy(in.ms_p_quote, in.ms_quote_size, 1, &quote);
    if (!status)
        status = enclave_copy(in.ms_p_qve_report_info, sizeof(sgx_ql_qe_report_info_t), 1, &info);
    if (!status)
        status = enclave_copy(in.ms_p_supplemental_data, in.ms_supplemental_data_size, 1,
                              &supplemental);
    if (!status)
        ms->ms_retval = sgx_tvl_verify_qve_report_and_identity(
            quote, in.ms_quote_size, info, in.ms_expiration_check_date,
            in.ms_collateral_expiration_status, in.ms_quote_verification_result, supplemental,
            in.ms_supplemental_data_size, in.ms_qve_isvsvn_threshold);
    free(quote);
    free(info);
    free(supplemental);
    return status;
}

BRIDGE(tee_verify_qae_report_and_identity)
{
    MS(tee_verify_qae_report_and_identity);
    void *input;
    sgx_status_t status = enclave_copy(ms->ms_input, sizeof(qae_verification_input_t), 1, &input);
    if (status)
        return status;
    ms->ms_retval = tee_verify_qae_report_and_identity(input, ms->ms_qae_report_info,
                                                       ms->ms_qae_isvsvn_threshold);
    free(input);
    return SGX_SUCCESS;
}

#define NR_ECALL 42
#define NR_OCALL 38
#define E(name) {(const void *)sgx_##name, 0, 0}

const struct {
    size_t nr_ecall;
    struct ecall_entry ecall_table[NR_ECALL];
} g_ecall_table_storage __asm__("g_ecall_table") = {
    NR_ECALL,
    {
        E(ecall_type_char), E(ecall_type_int), E(ecall_type_float), E(ecall_type_double),
        E(ecall_type_size_t), E(ecall_type_wchar_t), E(ecall_type_struct),
        E(ecall_type_enum_union), E(ecall_type_struct_return), E(ecall_type_mixed),
        E(ecall_pointer_user_check), E(ecall_pointer_in), E(ecall_pointer_out),
        E(ecall_pointer_in_out), E(ecall_pointer_string), E(ecall_pointer_string_const),
        E(ecall_pointer_wstring), E(ecall_pointer_size), E(ecall_pointer_count),
        E(ecall_pointer_isptr_readonly), E(ecall_pointer_isptr_out), E(ecall_pointer_sizefunc),
        E(ecall_pointer_struct), E(ecall_pointer_size_count),
        E(ecall_array_user_check), E(ecall_array_in), E(ecall_array_out), E(ecall_array_in_out),
        E(ecall_array_isary), E(ecall_array_isary_in), E(ecall_array_isary_out),
        E(ecall_array_2d),
        E(ecall_function_public), {(const void *)sgx_ecall_function_private, 1, 0},
        E(ecall_ocalls),
        /* sgx_tswitchless.edl, sgx_tkey_exchange.edl, sgx_dcap_tvl.edl */
        E(sl_init_switchless), E(sl_run_switchless_tworker), E(sgx_ra_get_ga),
        E(sgx_ra_proc_msg2_trusted), E(sgx_ra_get_msg3_trusted),
        E(sgx_tvl_verify_qve_report_and_identity), E(tee_verify_qae_report_and_identity),
    },
};

/* Row = OCALL, column = ECALL: ocall_function_allow (1) allows
   ecall_function_private (33). */
const struct {
    size_t nr_ocall;
    uint8_t entry_table[NR_OCALL][NR_ECALL];
} g_dyn_entry_table_storage __asm__("g_dyn_entry_table") = {
    NR_OCALL,
    {
        [1] = {[33] = 1},
    },
};

/* -- OCALL proxies: ms and buffers on the untrusted stack (sgx_ocalloc) -------- */
enum {
    OCALL_PRINT_STRING = 0, OCALL_FUNCTION_ALLOW, OCALL_POINTER_USER_CHECK, OCALL_POINTER_IN,
    OCALL_POINTER_OUT, OCALL_POINTER_IN_OUT, OCALL_STRINGS, OCALL_SIZEFUNC, OCALL_ISARY,
    OCALL_ISPTR, OCALL_STRUCT, OCALL_ERRNO,
    OCALL_U_SGXSSL_FTIME = 27,
};

/* Reserve `size` bytes after `*cursor` for a copy of `data` (NULL: none). */
static void *place(char **cursor, const void *data, size_t size, int copy)
{
    if (!data)
        return 0;
    void *slot = *cursor;
    *cursor += (size + 15) & ~(size_t)15;
    if (copy)
        memcpy(slot, data, size);
    else
        memset(slot, 0, size);
    return slot;
}

static size_t rounded(const void *p, size_t size) { return p ? (size + 15) & ~(size_t)15 : 0; }

sgx_status_t ocall_print_string(const char *str)
{
    size_t len = str ? strlen(str) + 1 : 0;
    ms_ocall_print_string_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(str, len));
    char *cursor = (char *)(ms + 1);
    ms->ms_str = place(&cursor, str, len, 1);
    sgx_status_t status = sgx_ocall(OCALL_PRINT_STRING, ms);
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_function_allow(int *retval, int x)
{
    ms_ocall_function_allow_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_x = x;
    sgx_status_t status = sgx_ocall(OCALL_FUNCTION_ALLOW, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_pointer_user_check(int *val)
{
    ms_ocall_pointer_user_check_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_val = val; /* [user_check]: the address itself */
    sgx_status_t status = sgx_ocall(OCALL_POINTER_USER_CHECK, ms);
    sgx_ocfree();
    return status;
}

static sgx_status_t int_ocall(uint32_t index, int *val, int copy_in, int copy_out)
{
    ms_ocall_pointer_in_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(val, sizeof(int)));
    char *cursor = (char *)(ms + 1);
    ms->ms_val = place(&cursor, val, sizeof(int), copy_in);
    sgx_status_t status = sgx_ocall(index, ms);
    if (status == SGX_SUCCESS && copy_out)
        copy_back(val, ms->ms_val, sizeof(int));
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_pointer_in(int *val) { return int_ocall(OCALL_POINTER_IN, val, 1, 0); }
sgx_status_t ocall_pointer_out(int *val) { return int_ocall(OCALL_POINTER_OUT, val, 0, 1); }
sgx_status_t ocall_pointer_in_out(int *val) { return int_ocall(OCALL_POINTER_IN_OUT, val, 1, 1); }

sgx_status_t ocall_strings(size_t *retval, const char *s, const wchar_t *w)
{
    size_t s_len = s ? strlen(s) + 1 : 0, w_len = w ? (wide_length(w) + 1) * sizeof(wchar_t) : 0;
    ms_ocall_strings_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(s, s_len) + rounded(w, w_len));
    char *cursor = (char *)(ms + 1);
    ms->ms_s = place(&cursor, s, s_len, 1);
    ms->ms_w = place(&cursor, w, w_len, 1);
    sgx_status_t status = sgx_ocall(OCALL_STRINGS, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_sizefunc(int *retval, char *buf)
{
    size_t len = buf ? get_buffer_len(buf) : 0;
    ms_ocall_sizefunc_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(buf, len));
    char *cursor = (char *)(ms + 1);
    ms->ms_buf = place(&cursor, buf, len, 1);
    sgx_status_t status = sgx_ocall(OCALL_SIZEFUNC, ms);
    if (status == SGX_SUCCESS) {
        copy_back(buf, ms->ms_buf, len);
        if (retval)
            *retval = ms->ms_retval;
    }
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_isary(int *retval, array_t arr)
{
    ms_ocall_isary_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(arr, sizeof(array_t)));
    char *cursor = (char *)(ms + 1);
    ms->ms_arr = place(&cursor, arr, sizeof(array_t), 1);
    sgx_status_t status = sgx_ocall(OCALL_ISARY, ms);
    if (status == SGX_SUCCESS) {
        copy_back(arr, ms->ms_arr, sizeof(array_t));
        if (retval)
            *retval = ms->ms_retval;
    }
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_isptr(size_t *retval, buffer_t buf, size_t len)
{
    ms_ocall_isptr_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(buf, len));
    char *cursor = (char *)(ms + 1);
    ms->ms_buf = place(&cursor, buf, len, 1);
    ms->ms_len = len;
    sgx_status_t status = sgx_ocall(OCALL_ISPTR, ms);
    if (status == SGX_SUCCESS && retval)
        *retval = ms->ms_retval;
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_struct(uint64_t *retval, struct struct_foo_t foo, struct struct_foo_t *copy,
                          enum enum_foo_t e, union union_foo_t u)
{
    ms_ocall_struct_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(copy, sizeof(*copy)));
    char *cursor = (char *)(ms + 1);
    ms->ms_foo = foo;
    ms->ms_copy = place(&cursor, copy, sizeof(*copy), 0);
    ms->ms_e = e;
    ms->ms_u = u;
    sgx_status_t status = sgx_ocall(OCALL_STRUCT, ms);
    if (status == SGX_SUCCESS) {
        copy_back(copy, ms->ms_copy, sizeof(*copy));
        if (retval)
            *retval = ms->ms_retval;
    }
    sgx_ocfree();
    return status;
}

sgx_status_t ocall_errno(int *retval, int *error, int value)
{
    ms_ocall_errno_t *ms = sgx_ocalloc(sizeof(*ms));
    ms->ms_value = value;
    sgx_status_t status = sgx_ocall(OCALL_ERRNO, ms);
    if (status == SGX_SUCCESS) {
        if (retval)
            *retval = ms->ms_retval;
        if (error)
            *error = ms->ocall_errno; /* what the SDK's proxy stores in errno */
    }
    sgx_ocfree();
    return status;
}

sgx_status_t u_sgxssl_ftime(void *timeptr, uint32_t timeb_len)
{
    ms_u_sgxssl_ftime_t *ms = sgx_ocalloc(sizeof(*ms) + rounded(timeptr, timeb_len));
    char *cursor = (char *)(ms + 1);
    ms->ms_timeptr = place(&cursor, timeptr, timeb_len, 0);
    ms->ms_timeb_len = timeb_len;
    sgx_status_t status = sgx_ocall(OCALL_U_SGXSSL_FTIME, ms);
    if (status == SGX_SUCCESS)
        copy_back(timeptr, ms->ms_timeptr, timeb_len);
    sgx_ocfree();
    return status;
}
