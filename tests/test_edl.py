"""EDL parsing, edger8r's ECALL/OCALL numbering, and ms struct layout
checked against gcc's own layout of the same C structs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vsgx.samples import HELLO_DIR
from vsgx.sdk import EdlError, load_edl
from vsgx.sdk.ctypes_sysv import TypeSystem, ms_layout
from vsgx.sdk.edl import STANDARD_EDL_DIR, CType, parse_edl_text


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_indices_follow_edger8r_own_functions_then_imports_depth_first(tmp_path):
    write(tmp_path, "lib/a.edl", """enclave {
        from "b.edl" import *;
        trusted { public void a_e(void); };
        untrusted { void a_o1(void); void a_o2(void); };
    };""")
    write(tmp_path, "lib/b.edl", """enclave {
        trusted { public void b_e(void); };
        untrusted { void b_o(void); void b_unused(void); };
    };""")
    write(tmp_path, "c.edl", """enclave {
        untrusted { void c_o(void); };
        trusted { public void c_e(void); };
    };""")
    root = write(tmp_path, "top.edl", """enclave {
        from "lib/a.edl" import *;
        from "c.edl" import c_o, c_e;
        from "lib/b.edl" import b_o;      /* reached twice: keeps its first place */
        trusted { public int top_e(int x); };
        untrusted { void top_o([in, string] const char *s); };
    };""")
    interface = load_edl(root)
    assert [f.name for f in interface.ecalls] == ["top_e", "a_e", "b_e", "c_e"]
    assert [f.name for f in interface.ocalls] == [
        "top_o", "a_o1", "a_o2", "b_o", "b_unused", "c_o"]
    assert interface.ecall("c_e")[0] == 3 and interface.ocall("c_o")[0] == 5


def test_the_sample_edl_numbers_as_its_hand_written_bridges(tmp_path):
    interface = load_edl(HELLO_DIR / "hello.edl")
    assert interface.ecall("ecall_private") == (12, interface.ecalls[12])
    assert not interface.ecalls[12].public
    assert [f.name for f in interface.ocalls][:4] == [
        "ocall_print", "ocall_nop", "ocall_call_back", "sgx_oc_cpuidex"]
    assert interface.ocall("pthread_wakeup_ocall")[0] == 10
    assert interface.ocalls[2].allow == ("ecall_private",)


def test_attributes_structs_enums_and_the_preprocessor():
    edl = parse_edl_text("""
    #define BUF 16
    enclave {
        include "types.h"
        enum color { RED, GREEN = 5, BLUE };
        struct point { int x; int y; char tag[3]; };
        union value { int i; double d; };
        trusted {
            public int f([in, out, size=len, count=n] void *p, size_t len, size_t n,
                         [out] int arr[BUF], [user_check] void *raw, enum color c,
                         [in, wstring] const wchar_t *w, [in, isptr, readonly] foo_t f);
        };
        untrusted {
            [cdecl] int g([in] struct point *pt) allow(f) propagate_errno;
#ifdef NEVER
            void hidden(void);
#endif
        };
    };""")
    (f,) = edl.trusted
    p, _, _, arr, raw, color, w, foo = f.params
    assert p.direction_in and p.direction_out and p.size == "len" and p.count == "n"
    assert arr.type.dims == (16,) and arr.direction_out
    assert raw.user_check and color.type.base == "enum color"
    assert w.wstring and foo.isptr and foo.readonly
    (g,) = edl.untrusted
    assert g.allow == ("f",) and g.propagate_errno
    assert edl.enums == {"RED": 0, "GREEN": 5, "BLUE": 6} and "color" in edl.enum_types
    types = TypeSystem(edl.composites, edl.enum_types)
    assert types.sizeof(g.params[0].type.pointee()) == 12
    assert types.size_align(CType("union value")) == (8, 8)
    assert types.unpack_composite("point", types.pack_composite(
        CType("struct point"), {"x": -1, "y": 7, "tag": [1, 2, 3]})) == {
        "x": -1, "y": 7, "tag": [1, 2, 3]}
    assert edl.includes == ["types.h"]


@pytest.mark.parametrize("body, message", [
    ("public void f(int *p);", "needs [in], [out] or [user_check]"),
    ("public void f([out, string] char *p);", "[string] needs [in]"),
    ("public void f([in] void *p);", "needs size="),
    ("public void f([in, user_check] int *p);", "excludes"),
    ("public void f([in, string, size=4] char *p);", "excludes size="),
    ("public void f([in, bogus] int *p);", "unknown attribute"),
    ("public void f([out, sizefunc=g] int *p);", "sizefunc= needs [in]"),
    ("public void f(int a[n]);", "must be a number"),
    ("public void f(int x) allow(g);", "unexpected 'allow'"),
])
def test_invalid_declarations_are_refused(body, message):
    with pytest.raises(EdlError) as caught:
        parse_edl_text(f"enclave {{ trusted {{ {body} }}; }};")
    assert message in str(caught.value)


def test_import_errors_name_the_problem(tmp_path):
    missing = write(tmp_path, "m.edl", 'enclave { from "nowhere.edl" import *; };')
    with pytest.raises(EdlError, match=r"cannot find imported EDL 'nowhere\.edl'"):
        load_edl(missing)
    write(tmp_path, "x.edl", 'enclave { from "y.edl" import *; };')
    write(tmp_path, "y.edl", 'enclave { from "x.edl" import *; };')
    with pytest.raises(EdlError, match="circular import"):
        load_edl(tmp_path / "x.edl")
    selective = write(tmp_path, "s.edl", 'enclave { from "sgx_tstdc.edl" import nope; };')
    with pytest.raises(EdlError, match="has no function"):
        load_edl(selective)
    allow = write(tmp_path, "a.edl", "enclave { untrusted { void o(void) allow(ghost); }; };")
    with pytest.raises(EdlError, match="unknown ECALL 'ghost'"):
        load_edl(allow)
    with pytest.raises(EdlError, match="cannot read EDL"):
        load_edl(tmp_path / "absent.edl")


@pytest.mark.parametrize("name", sorted(p.name for p in STANDARD_EDL_DIR.glob("*.edl")))
def test_the_standard_edls_parse_and_use_only_types_vsgx_knows(tmp_path, name):
    from vsgx.sdk.bridges import check_function

    root = write(tmp_path, "root.edl", f'enclave {{ from "{name}" import *; }};')
    interface = load_edl(root)
    assert interface.ecalls or interface.ocalls
    types = TypeSystem(interface.composites, interface.enum_types)  # no types= given
    for function in interface.ecalls + interface.ocalls:
        check_function(function, types)  # layout and every buffer's size


def test_all_the_standard_edls_import_together(tmp_path):
    names = sorted(p.name for p in STANDARD_EDL_DIR.glob("*.edl"))
    assert {"sgx_tstdc.edl", "sgx_pthread.edl", "sgx_tswitchless.edl", "sgx_tkey_exchange.edl",
            "sgx_tprotected_fs.edl", "sgx_tsgxssl.edl", "sgx_dcap_tvl.edl", "sgx_ttls.edl",
            "sgx_tae_service.edl"} <= set(names)
    root = write(tmp_path, "all.edl", "enclave { " + " ".join(
        f'from "{name}" import *;' for name in names) + " };")
    interface = load_edl(root)
    assert len({f.name for f in interface.ocalls}) == len(interface.ocalls) == 26


# -- ms structs against gcc ------------------------------------------------------
_LAYOUT_EDL = """enclave {
    struct pair { char c; long long v; };
    enum mode { M0, M1 };
    trusted {
        public char e1(char c, double d, short s, [in, string] const char *name,
                       struct pair p, uint8_t b, [out, size=n] void *out, size_t n);
        public void e2(enum mode m, [in, out, count=4] int *v, long double x, float f);
        public struct pair e3([in, wstring] const wchar_t *w, int8_t t);
        public void e4(void);
    };
    untrusted {
        int o1(uint16_t a, [in, string] const char *s, uint64_t b) propagate_errno;
        void o2([out] int cpuinfo[4], int leaf);
        void o3(void) propagate_errno;
    };
};"""

_LAYOUT_C = """#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <wchar.h>
struct pair { char c; long long v; };
enum mode { M0, M1 };
typedef struct { char ms_retval; char ms_c; double ms_d; short ms_s; const char *ms_name;
  size_t ms_name_len; struct pair ms_p; uint8_t ms_b; void *ms_out; size_t ms_n; } ms_e1_t;
typedef struct { enum mode ms_m; int *ms_v; long double ms_x; float ms_f; } ms_e2_t;
typedef struct { struct pair ms_retval; const wchar_t *ms_w; size_t ms_w_len; int8_t ms_t; }
  ms_e3_t;
typedef struct { int ms_retval; int ocall_errno; uint16_t ms_a; const char *ms_s; uint64_t ms_b; }
  ms_o1_t;
typedef struct { int *ms_cpuinfo; int ms_leaf; } ms_o2_t;
typedef struct { int ocall_errno; } ms_o3_t;
#define F(t, m) printf(#t " " #m " %zu\\n", offsetof(t, m))
#define S(t) printf(#t " SIZE %zu\\n", sizeof(t))
int main(void) {
  F(ms_e1_t, ms_retval); F(ms_e1_t, ms_c); F(ms_e1_t, ms_d); F(ms_e1_t, ms_s);
  F(ms_e1_t, ms_name); F(ms_e1_t, ms_name_len); F(ms_e1_t, ms_p); F(ms_e1_t, ms_b);
  F(ms_e1_t, ms_out); F(ms_e1_t, ms_n); S(ms_e1_t);
  F(ms_e2_t, ms_m); F(ms_e2_t, ms_v); F(ms_e2_t, ms_x); F(ms_e2_t, ms_f); S(ms_e2_t);
  F(ms_e3_t, ms_retval); F(ms_e3_t, ms_w); F(ms_e3_t, ms_w_len); F(ms_e3_t, ms_t); S(ms_e3_t);
  F(ms_o1_t, ms_retval); F(ms_o1_t, ocall_errno); F(ms_o1_t, ms_a); F(ms_o1_t, ms_s);
  F(ms_o1_t, ms_b); S(ms_o1_t);
  F(ms_o2_t, ms_cpuinfo); F(ms_o2_t, ms_leaf); S(ms_o2_t);
  F(ms_o3_t, ocall_errno); S(ms_o3_t);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to compare layouts")
def test_ms_structs_match_gcc_layout(tmp_path):
    edl = write(tmp_path, "layout.edl", _LAYOUT_EDL)
    interface = load_edl(edl)
    types = TypeSystem(interface.composites, interface.enum_types)
    ours = set()
    for function in interface.ecalls + interface.ocalls:
        layout = ms_layout(function, types)
        if function.name == "e4":
            assert layout.size == 0  # edger8r passes ms = NULL
            continue
        for field in layout.fields:
            member = {"retval": "ms_retval", "errno": "ocall_errno"}.get(field.name,
                                                                        "ms_" + field.name)
            ours.add(f"ms_{function.name}_t {member} {field.offset}")
        ours.add(f"ms_{function.name}_t SIZE {layout.size}")
    source = write(tmp_path, "layout.c", _LAYOUT_C)
    binary = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(binary), str(source)], check=True)
    theirs = set(subprocess.run([str(binary)], capture_output=True, text=True,
                                check=True).stdout.split("\n")) - {""}
    assert ours == theirs


# -- edger8r's attribute rules, checked when the EDL is read -----------------------
@pytest.mark.parametrize("body, message", [
    ("public void f([in, size=n] int *p);", "'n' is neither a number nor a parameter"),
    ("public void f([in, count=ghost] int *p, size_t n);", "'ghost' is neither"),
    ("public void f([in, size=q] int *p, [user_check] int *q);", "'q' is not an integer"),
    ("public void f([in, size=d] int *p, double d);", "'d' is not an integer"),
    ("public void f([in, count=99999999999] int *p);", "out of range"),
    ("public void f([in, size=0] int *p);", "out of range"),
    ("public void f([in, size=65536, count=65536] uint8_t *p);", "size × count is more"),
    ("public void f([in] int a[100000][100000]);", "has 10000000000 elements"),
    ("public void f([in] int a[0]);", "dimension of 0"),
    ("public void f([in, size=4] int a[4]);", "explicitly declared array"),
    ("public void f([in] int *a[4]);", "arrays of pointers"),
    ("public void f([in, isary] int a);", "user-defined type name"),
    ("public void f([in, isptr] int x);", "user-defined type name"),
    ("public void f([in, isary, isptr] foo_t p);", "excludes [isptr]"),
    ("public void f([in, isary, size=4] foo_t p);", "takes no size"),
    ("public void f([in] foo_t p);", "not a pointer"),
    ("public void f([user_check] int x);", "not a pointer"),
    ("public void f([in, string] char **p);", "need a pointer to characters"),
    ("public void f([in, wstring] wchar_t a[4]);", "need a pointer to characters"),
    ("public void f([in, string, wstring] char *p);", "excludes [wstring]"),
    ("public void f([in, size=4, sizefunc=g] char *p);", "size= excludes sizefunc="),
    ("public void f([in, sizefunc=3] char *p);", "must name a function"),
    ("public void f([in, string, sizefunc=g] char *p);", "excludes size=, count= and sizefunc="),
    ("public void f([in, out] const char *p);", "readonly (const) pointer cannot be [out]"),
    ("public void f(int x, int x);", "two parameters named 'x'"),
])
def test_edger8rs_rules_refuse_the_edl_when_it_is_read(body, message):
    with pytest.raises(EdlError) as caught:
        parse_edl_text(f"enclave {{ trusted {{ {body} }}; }};")
    assert message in str(caught.value)


def test_bad_struct_member_attributes_are_refused():
    for members, message in [
        ("[size=len] char *buf; int len2;", "'len' is not a number or an integer member"),
        ("[size=8] int value;", "not a pointer"),
        ("[in] char *buf;", "not allowed on a member"),
    ]:
        with pytest.raises(EdlError, match=re.escape(message)):
            parse_edl_text(f"enclave {{ struct s {{ {members} }}; }};")
    edl = parse_edl_text("enclave { struct s { size_t len; [size=len] char *buf; }; };")
    assert edl.composites["s"].members[1].size == "len"


def test_foreign_pointers_arrays_and_sizefunc_are_marshalled_as_edger8r_does():
    edl = parse_edl_text("""enclave { trusted {
        public void f([user_check, isary] array_t a, [in, isptr, size=n] buffer_t b, size_t n,
                      [in, out, isary] array_t c, [in, out, sizefunc=get_len] char *d,
                      [in, isptr] handle_t h, [in, sizefunc=get_len, count=k] char *e, int k);
    }; };""")
    (f,) = edl.trusted
    types = TypeSystem(extra={"array_t": 40})
    layout = ms_layout(f, types)
    assert [(x.name, x.offset, x.size) for x in layout.fields] == [
        ("a", 0, 8), ("b", 8, 8), ("n", 16, 8), ("c", 24, 8), ("d", 32, 8), ("h", 40, 8),
        ("e", 48, 8), ("k", 56, 4)]
    assert f.params[3].sizefunc is None and f.params[4].sizefunc == "get_len"
    from vsgx.sdk.bridges import BufferSpec
    from vsgx.sdk.ctypes_sysv import UnknownTypeError

    assert BufferSpec(f, f.params[3], types).fixed == 40  # sizeof(array_t)
    with pytest.raises(UnknownTypeError, match=r"'\*handle_t'.*what handle_t points to"):
        BufferSpec(f, f.params[5], types)  # [isptr] without size=: sizeof(*h)
    pointee = TypeSystem(extra={"*handle_t": 24})
    assert BufferSpec(f, f.params[5], pointee).length(lambda name: 0) == 24
    spec = BufferSpec(f, f.params[6], types)
    assert spec.length({"k": 3}.__getitem__, lambda: 5) == 15  # count × sizefunc


def test_every_type_of_the_sdk_headers_is_known_with_its_size():
    types = TypeSystem()
    for name, size, align in [("sgx_ra_msg2_t", 168, 4), ("sgx_ra_msg3_t", 336, 1),
                              ("sgx_ra_key_type_t", 4, 4), ("sgx_ps_sec_prop_desc_t", 256, 1),
                              ("sgx_ql_qe_report_info_t", 960, 1), ("sgx_dh_msg1_t", 576, 1),
                              ("sgx_target_info_t", 512, 8), ("sgx_report_t", 432, 8),
                              ("sgx_sealed_data_t", 560, 8), ("sgx_ec256_signature_t", 64, 4),
                              ("qae_verification_input_t", 72, 8), ("sgx_enclave_id_t", 8, 8)]:
        assert types.size_align(CType(name)) == (size, align), name
    assert types.scalar_format(CType("sgx_ra_key_type_t")) == "I"
    assert types.scalar_format(CType("sgx_isv_svn_t")) == "H"
    assert types.scalar_format(CType("sgx_ecc_state_handle_t")) == "Q"  # a pointer typedef
    mine = TypeSystem(extra={"sgx_report_t": (16, 8)})  # the caller's size wins
    assert mine.size_align(CType("sgx_report_t")) == (16, 8)
    for bad in (0, -1, (24, 3), "24", (1 << 29)):
        with pytest.raises(EdlError, match="types"):
            TypeSystem(extra={"bad_t": bad})


def test_an_unknown_types_hint_suggests_a_pointers_size():
    from vsgx.sdk.ctypes_sysv import UnknownTypeError

    with pytest.raises(UnknownTypeError) as caught:
        TypeSystem().sizeof(CType("buffer_t"))
    message = str(caught.value)
    assert "types={'buffer_t': SIZE}" in message and "8 if it is a pointer" in message
    assert "16" not in message
