/* The marshalling structs of params.edl as edger8r generates them into
   params_t.h / params_u.h: ms_retval first, then one member per parameter
   (pointers, arrays, [isary] array_t as array_t *, [isptr] buffer_t as
   itself), size_t ms_<s>_len after an ECALL's [in] string, int
   ocall_errno for propagate_errno. Written by hand; tests compare them
   with vsgx's layouts through gcc's offsetof. */
#ifndef PARAMS_MS_H
#define PARAMS_MS_H
#include <stddef.h>
#include <stdint.h>

#include "params_types.h"

struct struct_foo_t {
    uint32_t struct_foo_0;
    uint64_t struct_foo_1;
};
enum enum_foo_t { ENUM_FOO_0 = 0, ENUM_FOO_1 = 1 };
union union_foo_t {
    uint32_t union_foo_0;
    uint32_t union_foo_1;
    uint64_t union_foo_3;
};

/* ECALLs: the enclave's own. */
typedef struct { int ms_retval; char ms_val; } ms_ecall_type_char_t;
typedef struct { int ms_retval; int ms_val; } ms_ecall_type_int_t;
typedef struct { double ms_retval; float ms_val; } ms_ecall_type_float_t;
typedef struct { double ms_retval; double ms_val; } ms_ecall_type_double_t;
typedef struct { size_t ms_retval; size_t ms_val; } ms_ecall_type_size_t_t;
typedef struct { int ms_retval; wchar_t ms_val; } ms_ecall_type_wchar_t_t;
typedef struct { uint64_t ms_retval; struct struct_foo_t ms_val; } ms_ecall_type_struct_t;
typedef struct {
    uint64_t ms_retval;
    enum enum_foo_t ms_val1;
    union union_foo_t *ms_val2;
} ms_ecall_type_enum_union_t;
typedef struct {
    struct struct_foo_t ms_retval;
    uint32_t ms_a;
    uint64_t ms_b;
} ms_ecall_type_struct_return_t;
typedef struct {
    int16_t ms_retval;
    int8_t ms_a;
    int16_t ms_b;
    uint32_t ms_c;
    int64_t ms_d;
} ms_ecall_type_mixed_t;
typedef struct { size_t ms_retval; void *ms_val; size_t ms_sz; } ms_ecall_pointer_user_check_t;
typedef struct { int ms_retval; int *ms_val; } ms_ecall_pointer_in_t;
typedef struct { int *ms_val; } ms_ecall_pointer_out_t;
typedef struct { int *ms_val; } ms_ecall_pointer_in_out_t;
typedef struct { char *ms_str; size_t ms_str_len; } ms_ecall_pointer_string_t;
typedef struct {
    size_t ms_retval;
    const char *ms_str;
    size_t ms_str_len;
} ms_ecall_pointer_string_const_t;
typedef struct {
    size_t ms_retval;
    const wchar_t *ms_str;
    size_t ms_str_len;
} ms_ecall_pointer_wstring_t;
typedef struct { void *ms_ptr; size_t ms_len; } ms_ecall_pointer_size_t;
typedef struct { int *ms_arr; size_t ms_cnt; } ms_ecall_pointer_count_t;
typedef struct {
    size_t ms_retval;
    buffer_t ms_buf;
    size_t ms_len;
} ms_ecall_pointer_isptr_readonly_t;
typedef struct { buffer_t ms_buf; size_t ms_len; } ms_ecall_pointer_isptr_out_t;
typedef struct { char *ms_buf; } ms_ecall_pointer_sizefunc_t;
typedef struct { uint64_t ms_retval; struct struct_foo_t *ms_foo; } ms_ecall_pointer_struct_t;
typedef struct {
    size_t ms_retval;
    const uint8_t *ms_items;
    size_t ms_sz;
    size_t ms_n;
} ms_ecall_pointer_size_count_t;
typedef struct { int ms_retval; int *ms_arr; } ms_ecall_array_user_check_t;
typedef struct { int ms_retval; int *ms_arr; } ms_ecall_array_in_t;
typedef struct { int *ms_arr; } ms_ecall_array_out_t;
typedef struct { int *ms_arr; } ms_ecall_array_in_out_t;
typedef struct { int ms_retval; array_t *ms_arr; } ms_ecall_array_isary_t;
typedef struct { int ms_retval; array_t *ms_arr; } ms_ecall_array_isary_in_t;
typedef struct { array_t *ms_arr; } ms_ecall_array_isary_out_t;
typedef struct { int *ms_arr; } ms_ecall_array_2d_t;
typedef struct { int ms_retval; int ms_x; } ms_ecall_function_public_t;
typedef struct { int ms_retval; int ms_x; } ms_ecall_function_private_t;
typedef struct { int ms_retval; } ms_ecall_ocalls_t;

/* ECALLs of the standard EDLs. */
typedef struct { sgx_status_t ms_retval; void *ms_sl_data; } ms_sl_init_switchless_t;
typedef struct { sgx_status_t ms_retval; } ms_sl_run_switchless_tworker_t;
typedef struct {
    sgx_status_t ms_retval;
    sgx_ra_context_t ms_context;
    sgx_ec256_public_t *ms_g_a;
} ms_sgx_ra_get_ga_t;
typedef struct {
    sgx_status_t ms_retval;
    sgx_ra_context_t ms_context;
    const sgx_ra_msg2_t *ms_p_msg2;
    const sgx_target_info_t *ms_p_qe_target;
    sgx_report_t *ms_p_report;
    sgx_quote_nonce_t *ms_p_nonce;
} ms_sgx_ra_proc_msg2_trusted_t;
typedef struct {
    sgx_status_t ms_retval;
    sgx_ra_context_t ms_context;
    uint32_t ms_quote_size;
    sgx_report_t *ms_qe_report;
    sgx_ra_msg3_t *ms_p_msg3;
    uint32_t ms_msg3_size;
} ms_sgx_ra_get_msg3_trusted_t;
typedef struct {
    quote3_error_t ms_retval;
    const uint8_t *ms_p_quote;
    uint32_t ms_quote_size;
    const sgx_ql_qe_report_info_t *ms_p_qve_report_info;
    time_t ms_expiration_check_date;
    uint32_t ms_collateral_expiration_status;
    sgx_ql_qv_result_t ms_quote_verification_result;
    const uint8_t *ms_p_supplemental_data;
    uint32_t ms_supplemental_data_size;
    sgx_isv_svn_t ms_qve_isvsvn_threshold;
} ms_sgx_tvl_verify_qve_report_and_identity_t;
typedef struct {
    quote3_error_t ms_retval;
    qae_verification_input_t *ms_input;
    sgx_ql_qe_report_info_t ms_qae_report_info;
    sgx_isv_svn_t ms_qae_isvsvn_threshold;
} ms_tee_verify_qae_report_and_identity_t;

/* OCALLs: the enclave's own. */
typedef struct { const char *ms_str; } ms_ocall_print_string_t;
typedef struct { int ms_retval; int ms_x; } ms_ocall_function_allow_t;
typedef struct { int *ms_val; } ms_ocall_pointer_user_check_t;
typedef struct { int *ms_val; } ms_ocall_pointer_in_t;
typedef struct { int *ms_val; } ms_ocall_pointer_out_t;
typedef struct { int *ms_val; } ms_ocall_pointer_in_out_t;
typedef struct { size_t ms_retval; const char *ms_s; const wchar_t *ms_w; } ms_ocall_strings_t;
typedef struct { int ms_retval; char *ms_buf; } ms_ocall_sizefunc_t;
typedef struct { int ms_retval; array_t *ms_arr; } ms_ocall_isary_t;
typedef struct { size_t ms_retval; buffer_t ms_buf; size_t ms_len; } ms_ocall_isptr_t;
typedef struct {
    uint64_t ms_retval;
    struct struct_foo_t ms_foo;
    struct struct_foo_t *ms_copy;
    enum enum_foo_t ms_e;
    union union_foo_t ms_u;
} ms_ocall_struct_t;
typedef struct { int ms_retval; int ocall_errno; int ms_value; } ms_ocall_errno_t;

/* OCALLs of the standard EDLs. */
typedef struct { int *ms_cpuinfo; int ms_leaf; int ms_subleaf; } ms_sgx_oc_cpuidex_t;
typedef struct { int ms_retval; const void *ms_self; } ms_sgx_thread_wait_untrusted_event_ocall_t;
typedef struct { int ms_retval; const void *ms_waiter; } ms_sgx_thread_set_untrusted_event_ocall_t;
typedef struct {
    int ms_retval;
    const void *ms_waiter;
    const void *ms_self;
} ms_sgx_thread_setwait_untrusted_events_ocall_t;
typedef struct {
    int ms_retval;
    const void **ms_waiters;
    size_t ms_total;
} ms_sgx_thread_set_multiple_untrusted_events_ocall_t;
typedef struct {
    int ms_retval;
    unsigned long long ms_waiter;
    unsigned long long ms_timeout;
} ms_pthread_wait_timeout_ocall_t;
typedef struct { int ms_retval; unsigned long long ms_self; } ms_pthread_create_ocall_t;
typedef struct { int ms_retval; unsigned long long ms_waiter; } ms_pthread_wakeup_ocall_t;
typedef struct {
    int8_t ms_retval;
    const char *ms_filename;
} ms_u_sgxprotectedfs_check_if_file_exists_t;
typedef struct {
    uint8_t *ms_retval;
    const char *ms_filename;
    uint8_t ms_read_only;
    int64_t *ms_file_size;
    int32_t *ms_error_code;
} ms_u_sgxprotectedfs_exclusive_file_map_t;
typedef struct {
    int32_t ms_retval;
    const char *ms_filename;
    uint8_t **ms_file_addr;
    int64_t ms_old_size;
    int64_t ms_new_size;
} ms_u_sgxprotectedfs_file_remap_t;
typedef struct {
    int32_t ms_retval;
    uint8_t *ms_file_addr;
    int64_t ms_file_size;
} ms_u_sgxprotectedfs_file_unmap_t;
typedef struct { int32_t ms_retval; const char *ms_filename; } ms_u_sgxprotectedfs_remove_t;
typedef struct {
    uint8_t ms_retval;
    uint8_t *ms_fileaddress;
    const char *ms_filename;
    uint64_t *ms_recovery_list;
    uint64_t ms_length;
} ms_u_sgxprotectedfs_fwrite_recovery_file_t;
typedef struct {
    int32_t ms_retval;
    const char *ms_filename;
    const char *ms_recovery_filename;
} ms_u_sgxprotectedfs_do_file_recovery_t;
typedef struct { void *ms_timeptr; uint32_t ms_timeb_len; } ms_u_sgxssl_ftime_t;
typedef struct { int ms_micro_seconds; } ms_u_sgxssl_usleep_t;
typedef struct {
    quote3_error_t ms_retval;
    sgx_target_info_t *ms_p_target_info;
    size_t ms_target_info_size;
} ms_sgx_tls_get_qe_target_info_ocall_t;
typedef struct {
    quote3_error_t ms_retval;
    uint32_t *ms_p_quote_size;
} ms_sgx_tls_get_quote_size_ocall_t;
typedef struct {
    quote3_error_t ms_retval;
    sgx_report_t *ms_p_report;
    size_t ms_report_size;
    uint8_t *ms_p_quote;
    uint32_t ms_quote_size;
} ms_sgx_tls_get_quote_ocall_t;
typedef struct {
    quote3_error_t ms_retval;
    uint32_t *ms_p_supplemental_data_size;
} ms_sgx_tls_get_supplemental_data_size_ocall_t;
typedef struct {
    quote3_error_t ms_retval;
    const uint8_t *ms_p_quote;
    uint32_t ms_quote_size;
    time_t ms_expiration_check_date;
    sgx_ql_qv_result_t *ms_p_quote_verification_result;
    sgx_ql_qe_report_info_t *ms_p_qve_report_info;
    size_t ms_qve_report_info_size;
    uint8_t *ms_p_supplemental_data;
    uint32_t ms_supplemental_data_size;
} ms_sgx_tls_verify_quote_ocall_t;
typedef struct {
    sgx_status_t ms_retval;
    uint32_t *ms_sid;
    uint8_t *ms_dh_msg1;
    uint32_t ms_dh_msg1_size;
    uint32_t ms_timeout;
} ms_create_session_ocall_t;
typedef struct {
    sgx_status_t ms_retval;
    uint32_t ms_sid;
    uint8_t *ms_dh_msg2;
    uint32_t ms_dh_msg2_size;
    uint8_t *ms_dh_msg3;
    uint32_t ms_dh_msg3_size;
    uint32_t ms_timeout;
} ms_exchange_report_ocall_t;
typedef struct {
    sgx_status_t ms_retval;
    uint32_t ms_sid;
    uint32_t ms_timeout;
} ms_close_session_ocall_t;
typedef struct {
    sgx_status_t ms_retval;
    uint8_t *ms_pse_message_req;
    uint32_t ms_pse_message_req_size;
    uint8_t *ms_pse_message_resp;
    uint32_t ms_pse_message_resp_size;
    uint32_t ms_timeout;
} ms_invoke_service_ocall_t;

#endif
