"""Where an application's quote comes from, and what each hop costs:

* the QE of an EVM in this process (sgx_qe_get_quote) — the baseline,
  measured in the same run;
* the QE of an EVM process over the channel (QUOTE on attested TLS over a
  Unix socket);
* the aesmd socket (GetQuoteEx, one connection per request as Intel's
  clients make them) in front of that EVM process;
* vsgx's drop-in libsgx_dcap_ql.so.1 (sgx_qe_get_quote called through
  ctypes), which is a client of that aesmd socket;
* GetLaunchToken through the aesmd socket.

    python benchmarks/quote_paths.py [--count 200]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import struct
import sys
import tempfile
from pathlib import Path

from common import bar_plot, latencies_us, print_table, save, summary_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vsgx.avm import connect_evm  # noqa: E402
from vsgx.avm.aesmd import (  # noqa: E402
    VSGX_ATT_KEY_ID,
    AesmdService,
    EvmBackend,
    decode_response,
    encode_request,
    request,
)
from vsgx.channel import EvidencePolicy  # noqa: E402
from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.evm import EnclaveVM, quoting_enclave  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.host.attestation import qe_target_info  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402
from vsgx.native.dcap import SONAME, library_dir  # noqa: E402

from conftest import ROOT_SECRET, EvmProcess, build_plain  # noqa: E402
from plain_ops import PlainEnclave  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("VSGX_DATA_DIR", str(work / "user-data"))
        elf = build_plain(work / "plain.elf")
        key = generate_signing_key()
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nisvsvn = 1\n"), key)
        (work / "plain.elf.sig").write_bytes(signed.data)
        # In this process.
        vm = EnclaveVM(root_secret=ROOT_SECRET)
        qe = quoting_enclave(vm, work / "local-attestation")
        local_avm = Avm(vm)
        local = PlainEnclave(Enclave.load(elf, evm=local_avm, debug=False))
        local_report = local.ereport(qe_target_info(local_avm), bytes(64))
        # An EVM process, reached over the channel, and aesmd in front of it.
        evm_process = EvmProcess(f"unix:{work / 'evm.sock'}", work / "data")
        evm = connect_evm(evm_process.address, EvidencePolicy(allow_unprotected=True),
                          warn=False)
        remote_avm = Avm(evm)
        remote = PlainEnclave(Enclave.load(elf, evm=remote_avm, debug=False))
        report = remote.ereport(qe_target_info(remote_avm), bytes(64))
        backend = EvmBackend(evm_process.address, EvidencePolicy(allow_unprotected=True))
        service = AesmdService(backend, log=lambda text: None)
        socket_path = str(work / "aesm.socket")
        thread = service.start(socket_path)
        size = evm.qe_quote_size()
        get_quote_ex = encode_request("getQuoteExReq", report=report,
                                      att_key_id=VSGX_ATT_KEY_ID, buf_size=size)

        def through_aesmd() -> None:
            _, fields = decode_response(request(socket_path, get_quote_ex))
            assert fields["errorCode"] == 0, fields

        plan = local.enclave.plan
        token_request = encode_request(
            "getLicTokenReq", mr_enclave=plan.sigstruct.enclavehash,
            mr_signer=plan.sigstruct.modulus, se_attributes=struct.pack("<QQ", 0x5, 0x3))

        def launch_token() -> None:
            assert decode_response(request(socket_path, token_request))[1]["errorCode"] == 0

        os.environ["VSGX_AESM_SOCKET"] = socket_path
        library = ctypes.CDLL(str(library_dir() / SONAME))
        library.sgx_qe_get_quote.restype = ctypes.c_uint32
        out = ctypes.create_string_buffer(size)
        report_buffer = ctypes.create_string_buffer(report, len(report))

        def through_library() -> None:
            status = library.sgx_qe_get_quote(report_buffer, ctypes.c_uint32(size), out)
            assert status == 0, hex(status)

        results = {
            "in-process QE (baseline)": latencies_us(lambda: qe.quote(local_report), args.count),
            "EVM process, channel": latencies_us(lambda: evm.quote(report), args.count),
            "aesmd socket": latencies_us(through_aesmd, args.count),
            "libsgx_dcap_ql drop-in": latencies_us(through_library, args.count),
            "GetLaunchToken (aesmd)": latencies_us(launch_token, args.count),
        }
        service.stop()
        thread.join(5)
        backend.close()
        remote.enclave.destroy()
        remote_avm.close()
        evm_process.stop()
        local.enclave.destroy()
        local_avm.close()
    summaries = {name: summary_us(samples) for name, samples in results.items()}
    print_table(f"quote paths ({args.count} runs each; provisional numbers on a shared "
                "machine)", ["path", "p50 us", "p99 us", "mean us"],
                [[name, s["p50_us"], s["p99_us"], s["mean_us"]] for name, s in summaries.items()])
    base = summaries["in-process QE (baseline)"]["p50_us"]
    for name, s in summaries.items():
        print(f"  {name}: {s['p50_us'] / base:.2f}x the in-process QE (p50)")
    save("quote_paths", {"count": args.count, "quote_bytes": size, "results": summaries})
    short = {"in-process QE (baseline)": "in-process", "EVM process, channel": "channel",
             "aesmd socket": "aesmd", "libsgx_dcap_ql drop-in": "dcap_ql",
             "GetLaunchToken (aesmd)": "token"}
    bar_plot("quote_paths", "Quote latency by path (p50)", [short[n] for n in summaries],
             [s["p50_us"] for s in summaries.values()], "microseconds",
             baseline_label="in-process")


if __name__ == "__main__":
    main()
