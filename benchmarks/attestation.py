"""Remote attestation costs, in-process:

* quote generation: the QE's sgx_qe_get_quote on a real enclave's REPORT
  (MAC check with the derived report key, one ECDSA P-256 signature),
  against the baseline of one bare ECDSA P-256 signature over the same 432
  bytes (the irreducible cost of a quote);
* the enclave's EREPORT to the QE (an EENTER round trip), for scale;
* quote verification by vsgx (chain, three ECDSA verifications, policy),
  against the third-party dcap-qvl verifier (Rust) on the same quote, with
  collateral, measured in the same run;
* SEV-SNP evidence verification (RSA-PSS chain and ECDSA P-384), synthetic
  keys.

    python benchmarks/attestation.py [--count 300]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from common import bar_plot, latencies_us, print_table, save, summary_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from vsgx.crypto import generate_signing_key  # noqa: E402
from vsgx.crypto.collateral import split_signed_document  # noqa: E402
from vsgx.crypto.pck import generate_key  # noqa: E402
from vsgx.crypto.quote import ecdsa_sign_raw, verify_quote  # noqa: E402
from vsgx.crypto.snp import verify_snp_evidence  # noqa: E402
from vsgx.evm import EnclaveVM, quoting_enclave  # noqa: E402
from vsgx.host import Avm, Enclave  # noqa: E402
from vsgx.host.attestation import qe_target_info  # noqa: E402
from vsgx.image import parse_config, sign_enclave  # noqa: E402

from conftest import build_plain  # noqa: E402
from plain_ops import PlainEnclave  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        elf = build_plain(work / "plain.elf")
        signed = sign_enclave(elf.read_bytes(), parse_config("[enclave]\nisvsvn = 1\n"),
                              generate_signing_key())
        (work / "plain.elf.sig").write_bytes(signed.data)
        vm = EnclaveVM(root_secret=bytes(32))
        qe = quoting_enclave(vm, work / "attestation")
        avm = Avm(vm)
        enclave = Enclave.load(elf, evm=avm, debug=False)
        plain = PlainEnclave(enclave)
        target = qe_target_info(enclave)
        report = plain.ereport(target, bytes(64))
        quote = qe.quote(report)
        root = qe.root_certificate
        key = generate_key()
        signed_part = quote[:432]
        results = {
            "ECDSA P-256 sign (baseline)": latencies_us(
                lambda: ecdsa_sign_raw(key, signed_part), args.count),
            "sgx_qe_get_quote": latencies_us(lambda: qe.quote(report), args.count),
            "EREPORT to the QE": latencies_us(lambda: plain.ereport(target, bytes(64)),
                                              args.count),
            "vsgx verify_quote": latencies_us(lambda: verify_quote(quote, root), args.count,
                                              warmup=10),
        }
        try:
            import dcap_qvl
        except ImportError:
            print("(dcap-qvl is not installed: no third-party baseline; pip install "
                  "'vsgx[test]')")
        else:
            c = qe.collateral()
            _, tcb, tcb_sig = split_signed_document(c.tcb_info)
            _, ident, ident_sig = split_signed_document(c.qe_identity)
            collateral = dcap_qvl.QuoteCollateralV3(
                c.pck_crl_issuer_chain, c.root_ca_crl, c.pck_crl, c.tcb_info_issuer_chain, tcb,
                tcb_sig, c.qe_identity_issuer_chain, ident, ident_sig)
            anchor = root.public_bytes(serialization.Encoding.DER)
            now = int(datetime.datetime.now(datetime.UTC).timestamp())
            results["dcap-qvl verify (third party)"] = latencies_us(
                lambda: dcap_qvl.verify_with_root_ca(quote, collateral, anchor, now),
                args.count, warmup=10)
        import test_snp

        chain = test_snp.make_chain()
        snp_report = test_snp.make_report(chain.vcek_key)
        results["SEV-SNP evidence"] = latencies_us(
            lambda: verify_snp_evidence(snp_report, chain.certificates, test_snp.BINDING,
                                        chain.policy), args.count, warmup=10)
        enclave.destroy()
        avm.close()
    summaries = {name: summary_us(samples) for name, samples in results.items()}
    print_table(f"attestation, in-process ({args.count} runs each; provisional numbers on a "
                "shared machine)", ["what", "p50 us", "p99 us", "mean us"],
                [[name, s["p50_us"], s["p99_us"], s["mean_us"]] for name, s in summaries.items()])
    sign = summaries["ECDSA P-256 sign (baseline)"]["p50_us"]
    print(f"\nquote generation / one ECDSA signature: "
          f"{summaries['sgx_qe_get_quote']['p50_us'] / sign:.1f}x; quote size {len(quote)} B")
    save("attestation", {"count": args.count, "quote_bytes": len(quote), "results": summaries})
    short = {"ECDSA P-256 sign (baseline)": "ECDSA sign", "sgx_qe_get_quote": "get_quote",
             "EREPORT to the QE": "EREPORT", "vsgx verify_quote": "vsgx verify",
             "dcap-qvl verify (third party)": "dcap-qvl", "SEV-SNP evidence": "SNP verify"}
    bar_plot("attestation", "Attestation latency (p50)", [short[n] for n in summaries],
             [s["p50_us"] for s in summaries.values()], "microseconds",
             baseline_label="ECDSA sign")


if __name__ == "__main__":
    main()
