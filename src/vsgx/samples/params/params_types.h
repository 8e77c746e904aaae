/* The types params.edl only includes: its own foreign types (as Intel's
   SampleEnclave's user_types.h has them) and the SDK types the standard
   EDLs pass. Built with -DVSGX_SDK_HEADERS and the SDK's include paths the
   SDK's own headers are used instead, to compare the layouts. */
#ifndef PARAMS_TYPES_H
#define PARAMS_TYPES_H
#include <stddef.h>
#include <stdint.h>

typedef void *buffer_t;   /* a foreign pointer: [isptr] */
typedef int array_t[10];  /* a foreign array: [isary] */

#ifdef VSGX_SDK_HEADERS
#include "sgx_error.h"
#include "sgx_key_exchange.h"
#include "sgx_report.h"
#include "sgx_ql_lib_common.h"
#include "sgx_qve_header.h"
#include "sgx_dcap_qae_tvl.h"
#include <time.h>
#else
/* Byte blobs of each SDK type's size and alignment (vsgx.sdk.sdk_types). */
#define SDK_BLOB(name, size, align)                                                    \
    typedef struct {                                                                   \
        _Alignas(align) uint8_t bytes[size];                                           \
    } name;                                                                            \
    _Static_assert(sizeof(name) == (size), #name)
typedef uint32_t sgx_status_t;
typedef uint32_t sgx_ra_context_t;
typedef uint32_t quote3_error_t;
typedef uint32_t sgx_ql_qv_result_t;
typedef uint16_t sgx_isv_svn_t;
typedef int64_t time_t;
SDK_BLOB(sgx_ec256_public_t, 64, 1);
SDK_BLOB(sgx_ra_msg2_t, 168, 4);
SDK_BLOB(sgx_ra_msg3_t, 336, 1);
SDK_BLOB(sgx_target_info_t, 512, 8);
SDK_BLOB(sgx_report_t, 432, 8);
SDK_BLOB(sgx_quote_nonce_t, 16, 1);
SDK_BLOB(sgx_ql_qe_report_info_t, 960, 1);
SDK_BLOB(qae_verification_input_t, 72, 8);
#endif

#endif
