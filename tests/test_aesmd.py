"""The aesmd-compatible service: Intel's wire format (4-byte length,
protobuf aesm.message.Request/Response, one request per connection) spoken
by a client written here with its own encoder, quotes that verify, launch
tokens EINIT accepts, EPID refused with Intel's status, and a decoder that
takes hostile input without harm."""

from __future__ import annotations

import hashlib
import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_launch import load_with_token, plain_plan
from vsgx.arch.quote import INTEL_QE3_MRSIGNER, VSGX_QE_MRSIGNER, parse_quote
from vsgx.arch.report import Report, Targetinfo
from vsgx.avm import aesmd
from vsgx.avm.aesmd import (
    ABSTRACT_SOCKET,
    AesmdService,
    AesmError,
    WireError,
    decode,
    decode_response,
    encode_request,
)
from vsgx.crypto.quote import QuotePolicy, attestation_key_id, verify_quote
from vsgx.evm.platform import LaunchPolicy as PlatformLaunchPolicy
from vsgx.evm.platform import PlatformConfig
from vsgx.evm.vm import EnclaveVM
from vsgx.host import Avm, Enclave
from vsgx.host.attestation import attestation_backend

from conftest import ROOT_SECRET
from plain_ops import PlainEnclave

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# -- a client with its own protobuf encoder (not the service's codec) -------------------
def varint(value: int) -> bytes:
    out = b""
    while value > 0x7F:
        out += bytes([value & 0x7F | 0x80])
        value >>= 7
    return out + bytes([value])


def pb_int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def pb_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def request_of(field: int, *parts: bytes) -> bytes:
    return pb_bytes(field, b"".join(parts))


def att_key_id(mrsigner: bytes, prod_id: int = 1) -> bytes:
    """sgx_att_key_id_ext_t for ECDSA P-256, laid out by hand."""
    base = (struct.pack("<HHH", 0, 0, 32) + mrsigner.ljust(48, b"\0") + struct.pack("<I", prod_id)
            + bytes(16 + 64 + 16) + struct.pack("<I", 2))
    assert len(base) == 158
    return base + bytes(98)


OUR_KEY_ID = att_key_id(VSGX_QE_MRSIGNER)
GRAMINES_KEY_ID = att_key_id(INTEL_QE3_MRSIGNER)


def exchange(path, payload: bytes) -> bytes | None:
    """One request on its own connection; None if the service closed it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(struct.pack("<I", len(payload)) + payload)
        header = sock.recv(4, socket.MSG_WAITALL)
        if len(header) < 4:
            return None
        (length,) = struct.unpack("<I", header)
        body = b""
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            assert chunk, "the response ended early"
            body += chunk
        return body


def answer(path, payload: bytes) -> tuple[str, dict]:
    body = exchange(path, payload)
    assert body is not None, "the service closed the connection"
    return decode_response(body)


# -- fixtures ------------------------------------------------------------------------------
class Service:
    def __init__(self, tmp_path, vm):
        self.avm = Avm(vm)
        self.backend = attestation_backend(vm)
        self.logs: list[str] = []
        self.service = AesmdService(self.backend, log=self.logs.append)
        self.path = str(tmp_path / "aesm.socket")
        self.thread = self.service.start(self.path)

    def close(self) -> None:
        self.service.stop()
        self.thread.join(5)
        self.avm.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, plain_enclave):
    vm = EnclaveVM(PlatformConfig(), root_secret=ROOT_SECRET, executor="unicorn",
                   data_dir=tmp_path_factory.mktemp("aesmd-data"))
    made = Service(tmp_path_factory.mktemp("aesmd"), vm)
    made.plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=made.avm))
    yield made
    made.plain.enclave.destroy()
    made.close()


# -- quoting ---------------------------------------------------------------------------------
def test_attestation_key_ids(service):
    name, r = answer(service.path, request_of(21))
    assert (name, r) == ("getSupportedAttKeyIDNumRes", {"errorCode": 0, "att_key_id_num": 1})
    name, r = answer(service.path, request_of(22, pb_int(1, 256)))
    assert name == "getSupportedAttKeyIDsRes" and r["att_key_ids"] == OUR_KEY_ID
    name, r = answer(service.path, request_of(22, pb_int(1, 512)))
    assert r["errorCode"] == AesmError.PARAMETER_ERROR
    name, r = answer(service.path, request_of(19))
    assert name == "selectAttKeyIDRes" and r["selected_att_key_id"] == OUR_KEY_ID
    unknown = att_key_id(b"\x01" * 32)
    listed = struct.pack("<HHI", 0, 0, 2) + unknown + GRAMINES_KEY_ID
    name, r = answer(service.path, request_of(19, pb_bytes(1, listed)))
    assert r == {"errorCode": 0, "selected_att_key_id": GRAMINES_KEY_ID}
    name, r = answer(service.path, request_of(19, pb_bytes(
        1, struct.pack("<HHI", 0, 0, 1) + unknown)))
    assert r["errorCode"] == AesmError.UNSUPPORTED_ATT_KEY_ID
    for bad in (struct.pack("<HHI", 1, 0, 1) + OUR_KEY_ID, struct.pack("<HHI", 0, 0, 2)
                + OUR_KEY_ID, struct.pack("<HHI", 0, 0, 11) + OUR_KEY_ID * 11):
        assert answer(service.path, request_of(19, pb_bytes(1, bad)))[1]["errorCode"] \
            == AesmError.PARAMETER_ERROR


def test_a_quote_through_the_socket_verifies(service):
    name, init = answer(service.path, request_of(15, pb_bytes(1, OUR_KEY_ID), pb_int(3, 1),
                                                 pb_int(4, 32)))
    assert name == "initQuoteExRes" and init["errorCode"] == 0
    assert init["pub_key_id_size"] == 32 and len(init["target_info"]) == 512
    report = service.plain.ereport(init["target_info"], b"\x77" * 64)
    _, size = answer(service.path, request_of(16, pb_bytes(1, OUR_KEY_ID)))
    assert size["errorCode"] == 0
    name, got = answer(service.path, request_of(17, pb_bytes(1, report), pb_bytes(2, OUR_KEY_ID),
                                                pb_int(4, size["quote_size"] + 100)))
    assert name == "getQuoteExRes" and got["errorCode"] == 0
    # Intel's aesmd hands back the whole buffer: the quote, then zeros.
    padded = got["quote"]
    assert len(padded) == size["quote_size"] + 100 and padded[size["quote_size"]:] == bytes(100)
    quote = padded[:436 + struct.unpack_from("<I", padded, 432)[0]]
    assert len(quote) == size["quote_size"]
    qe = service.backend.qe
    verified = verify_quote(quote, qe.root_certificate, QuotePolicy(
        mrenclave=service.plain.enclave.plan.measure(), allow_debug=True))
    assert verified.report_body.reportdata == b"\x77" * 64
    assert init["pub_key_id"] == attestation_key_id(parse_quote(quote).attestation_key)
    # Without b_pub_key_id, only its size.
    _, plain_init = answer(service.path, request_of(15, pb_bytes(1, OUR_KEY_ID), pb_int(3, 0)))
    assert "pub_key_id" not in plain_init and plain_init["pub_key_id_size"] == 32


def test_gramines_hard_coded_intel_qe3_key_id_is_served(service):
    _, init = answer(service.path, request_of(15, pb_bytes(1, GRAMINES_KEY_ID), pb_int(3, 1),
                                              pb_int(4, 32)))
    report = service.plain.ereport(init["target_info"])
    _, got = answer(service.path, request_of(17, pb_bytes(1, report),
                                             pb_bytes(2, GRAMINES_KEY_ID), pb_int(4, 8192)))
    assert got["errorCode"] == 0 and parse_quote(got["quote"][:436 + struct.unpack_from(
        "<I", got["quote"], 432)[0]])


def test_the_qe_report_info_comes_back_with_the_qes_report(service):
    _, init = answer(service.path, request_of(15, pb_bytes(1, OUR_KEY_ID), pb_int(3, 0)))
    report = service.plain.ereport(init["target_info"])
    own = Report.unpack(service.plain.ereport(bytes(512)))
    target = Targetinfo(measurement=own.mrenclave, attributes=own.attributes, xfrm=own.xfrm,
                        miscselect=own.miscselect).pack()
    nonce = os.urandom(16)
    info = nonce + target + bytes(432)
    _, got = answer(service.path, request_of(17, pb_bytes(1, report), pb_bytes(2, OUR_KEY_ID),
                                             pb_bytes(3, info), pb_int(4, 8192)))
    assert got["errorCode"] == 0 and got["qe_report_info"][:528] == nonce + target
    qe_report = got["qe_report_info"][528:]
    quote = got["quote"][:436 + struct.unpack_from("<I", got["quote"], 432)[0]]
    assert Report.unpack(qe_report).reportdata == hashlib.sha256(nonce + quote).digest() \
        + bytes(32)
    assert service.plain.verify_report(qe_report) == 0


@pytest.mark.parametrize("payload,status", [
    (request_of(17, pb_bytes(1, bytes(432)), pb_bytes(2, OUR_KEY_ID), pb_int(4, 8192)),
     AesmError.INVALID_REPORT),
    (request_of(17, pb_bytes(1, bytes(100)), pb_bytes(2, OUR_KEY_ID), pb_int(4, 8192)),
     AesmError.PARAMETER_ERROR),
    (request_of(17, pb_bytes(1, bytes(432)), pb_bytes(2, att_key_id(b"\x05" * 32)),
                pb_int(4, 8192)), AesmError.UNSUPPORTED_ATT_KEY_ID),
    (request_of(17, pb_bytes(1, bytes(432)), pb_int(4, 8192)), AesmError.PARAMETER_ERROR),
    (request_of(17, pb_bytes(1, bytes(432)), pb_bytes(2, OUR_KEY_ID), pb_bytes(3, bytes(10)),
                pb_int(4, 8192)), AesmError.PARAMETER_ERROR),
    (request_of(17, pb_bytes(1, bytes(432)), pb_bytes(2, OUR_KEY_ID), pb_int(4, 2 << 20)),
     AesmError.PARAMETER_ERROR),
    (request_of(16, pb_bytes(1, OUR_KEY_ID[:100])), AesmError.PARAMETER_ERROR),
    (request_of(15, pb_bytes(1, OUR_KEY_ID), pb_int(3, 1), pb_int(4, 8)),
     AesmError.PARAMETER_ERROR),
    (request_of(17, pb_bytes(2, OUR_KEY_ID), pb_int(4, 8192)), AesmError.UNEXPECTED_ERROR),
])
def test_quoting_refusals_have_intels_status(service, payload, status):
    assert answer(service.path, payload)[1]["errorCode"] == status


def test_a_quote_buffer_too_small_is_a_parameter_error(service):
    _, init = answer(service.path, request_of(15, pb_bytes(1, OUR_KEY_ID), pb_int(3, 0)))
    report = service.plain.ereport(init["target_info"])
    _, got = answer(service.path, request_of(17, pb_bytes(1, report), pb_bytes(2, OUR_KEY_ID),
                                             pb_int(4, 1000)))
    assert got == {"errorCode": AesmError.PARAMETER_ERROR}


# -- EPID and the white list -----------------------------------------------------------------
@pytest.mark.parametrize("payload,response", [
    (request_of(1), "initQuoteRes"),
    (request_of(2, pb_bytes(1, bytes(432)), pb_int(2, 1), pb_bytes(3, bytes(16)),
                pb_int(6, 2048)), "getQuoteRes"),
    (request_of(4, pb_bytes(1, bytes(101)), pb_int(2, 1), pb_int(3, 12)), "reportErrRes"),
    (request_of(12), "sgxGetExtendedEpidGroupIdRes"),
    (request_of(13, pb_int(1, 0)), "sgxSwitchExtendedEpidGroupRes"),
    (request_of(14, pb_bytes(1, b"x"), pb_int(2, 1)), "sgxRegisterRes"),
    (request_of(18, pb_int(2, 12), pb_int(3, 0)), "checkUpdateStatusRes"),
    (request_of(10), "getWhiteListSizeRes"),
    (request_of(11, pb_int(1, 10)), "getWhiteListRes"),
])
def test_epid_is_answered_service_unavailable(service, payload, response):
    name, r = answer(service.path, payload)
    assert (name, r) == (response, {"errorCode": AesmError.SERVICE_UNAVAILABLE})
    assert any("not supported" in line or "white list" in line for line in service.logs)


def test_a_request_without_its_required_fields_gets_unexpected_error(service):
    name, r = answer(service.path, request_of(2, pb_bytes(1, bytes(432))))
    assert (name, r) == ("getQuoteRes", {"errorCode": AesmError.UNEXPECTED_ERROR})


# -- launch tokens -------------------------------------------------------------------------------
def test_a_launch_token_from_the_socket_is_accepted_by_einit(tmp_path, plain_enclave):
    """On a platform whose launch control needs tokens (a non-FLC CPU)."""
    plan = plain_plan(plain_enclave)
    service = Service(tmp_path, EnclaveVM(
        PlatformConfig(launch_policy=PlatformLaunchPolicy(frozenset())),
        root_secret=ROOT_SECRET, executor="unicorn", data_dir=tmp_path / "data"))
    tokens = []

    def token_for(secs) -> bytes:
        attributes = struct.pack("<QQ", secs.attributes, secs.xfrm)
        name, r = answer(service.path, request_of(
            3, pb_bytes(1, plan.sigstruct.enclavehash), pb_bytes(2, plan.sigstruct.modulus),
            pb_bytes(3, attributes), pb_int(9, 10000)))
        assert name == "getLicTokenRes" and r["errorCode"] == 0
        tokens.append(r["token"])
        return r["token"]

    try:
        load_with_token(service.avm, plan, token_for)
        _launch_refusals(service, plan)
    finally:
        service.close()
    assert len(tokens[0]) == 304 and tokens[0][0] == 1


def _launch_refusals(service, plan) -> None:
    _, r = answer(service.path, request_of(
        3, pb_bytes(1, plan.sigstruct.enclavehash), pb_bytes(2, plan.sigstruct.modulus),
        pb_bytes(3, struct.pack("<QQ", 0x17, 0x3))))
    assert r == {"errorCode": AesmError.GET_LICENSETOKEN_ERROR}
    _, r = answer(service.path, request_of(3, pb_bytes(1, bytes(32)), pb_bytes(2, bytes(10)),
                                          pb_bytes(3, bytes(16))))
    assert r == {"errorCode": AesmError.PARAMETER_ERROR}


# -- hostile input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [
    b"\xff" * 20,  # a varint that never ends
    request_of(17, b"\x0a\xff\xff\xff\xff\x0f"),  # a length past the end
    request_of(15, pb_bytes(3, b"x")),  # a bool sent as bytes
    request_of(15, pb_int(3, 2)),  # a bool of 2
    request_of(16, pb_int(9, 1 << 40)),  # a uint32 beyond 32 bits
    request_of(21) + request_of(21),  # the same request twice
    request_of(21) + request_of(22, pb_int(1, 256)),  # two requests
    pb_bytes(99, b""),  # a request nobody knows
    b"",  # no request at all
    varint(21 << 3 | 3),  # a group
])
def test_malformed_requests_close_the_connection_and_the_service_goes_on(service, payload):
    assert exchange(service.path, payload) is None
    assert answer(service.path, request_of(21))[1]["att_key_id_num"] == 1


def test_a_huge_length_or_a_silent_client_does_not_stop_the_service(service):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(service.path)
        sock.sendall(struct.pack("<I", 0xFFFFFFF0))
        assert sock.recv(4) == b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(service.path)
        silent.sendall(b"\x05\x00")  # half a length, then nothing
        assert answer(service.path, request_of(21))[1]["att_key_id_num"] == 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as short:
        short.connect(service.path)
        short.sendall(struct.pack("<I", 100) + b"\x0a")  # a body shorter than said
        short.shutdown(socket.SHUT_WR)
        assert short.recv(4) == b""
    assert answer(service.path, request_of(21))[1]["att_key_id_num"] == 1


VALID = [request_of(21), request_of(22, pb_int(1, 256)), request_of(19),
         request_of(15, pb_bytes(1, OUR_KEY_ID), pb_int(3, 1), pb_int(4, 32)),
         request_of(16, pb_bytes(1, OUR_KEY_ID)),
         request_of(17, pb_bytes(1, bytes(432)), pb_bytes(2, OUR_KEY_ID), pb_int(4, 8192)),
         request_of(3, pb_bytes(1, bytes(32)), pb_bytes(2, bytes(384)), pb_bytes(3, bytes(16))),
         request_of(2, pb_bytes(1, bytes(432)), pb_int(2, 1), pb_bytes(3, bytes(16)),
                    pb_int(6, 2048))]


def _handled_cleanly(service, payload: bytes) -> None:
    response = service.service.handle(payload)
    if response is not None:
        _, fields = decode_response(response)
        assert "errorCode" in fields


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_requests(service, data):
    original = bytearray(data.draw(st.sampled_from(VALID)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(original) - 1))
        original[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(original)))
    _handled_cleanly(service, bytes(original[:cut]))


@FUZZ
@given(payload=st.binary(max_size=200))
def test_fuzz_random_requests(service, payload):
    _handled_cleanly(service, payload)


@FUZZ
@given(payload=st.binary(max_size=300))
def test_fuzz_the_decoder_raises_only_wire_errors(payload):
    try:
        decode(payload, aesmd.REQUEST)
    except WireError:
        pass
    try:
        decode_response(payload)
    except WireError:
        pass


def test_the_codec_round_trips_intels_layout():
    payload = encode_request("getQuoteExReq", report=b"r" * 432, att_key_id=OUR_KEY_ID,
                             buf_size=5000)
    assert payload == request_of(17, pb_bytes(1, b"r" * 432), pb_bytes(2, OUR_KEY_ID),
                                 pb_int(4, 5000))
    assert decode(payload, aesmd.REQUEST) == {"getQuoteExReq": {
        "report": b"r" * 432, "att_key_id": OUR_KEY_ID, "buf_size": 5000}}
    with pytest.raises(WireError, match="lacks report"):
        decode(request_of(17, pb_int(4, 1)), aesmd.REQUEST)
    # Unknown fields are skipped (proto2), wherever they are.
    assert decode(request_of(21, pb_int(7, 3), pb_bytes(8, b"x")) + pb_int(30, 1),
                  aesmd.REQUEST) == {"getSupportedAttKeyIDNumReq": {}}


def test_the_abstract_socket_admits_this_user(tmp_path, service):
    extra = AesmdService(service.backend, log=lambda text: None)
    try:
        thread = extra.start(None, abstract=True)
    except Exception as exc:  # another service on this machine holds the name
        if "in use" in str(exc):
            pytest.skip(f"the abstract aesmd socket is taken here: {exc}")
        raise
    try:
        assert answer(ABSTRACT_SOCKET, request_of(21))[1]["att_key_id_num"] == 1
    finally:
        extra.stop()
        thread.join(5)
