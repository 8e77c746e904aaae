"""`vsgx quote verify` and `vsgx quote collateral`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vsgx.cli.main import command, print_json, read_file, write_file
from vsgx.errors import VsgxError


def _hex32(text: str | None, what: str) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise VsgxError(f"{what} must be hexadecimal") from None
    if len(value) != 32:
        raise VsgxError(f"{what} must be 32 bytes (64 hex digits), not {len(value)}")
    return value


def _svn(value: int | None, what: str) -> int | None:
    if value is not None and not 0 <= value <= 0xFFFF:
        raise VsgxError(f"{what} must be between 0 and 65535")
    return value


@command("quote verify")
def cmd_quote_verify(args: argparse.Namespace) -> int:
    from vsgx.crypto.pck import PckError, load_certificate
    from vsgx.crypto.quote import QuotePolicy, verify_quote

    policy = QuotePolicy(mrenclave=_hex32(args.mrenclave, "--mrenclave"),
                         mrsigner=_hex32(args.mrsigner, "--mrsigner"),
                         isvprodid=_svn(args.isvprodid, "--isvprodid"),
                         isvsvn_min=_svn(args.isvsvn_min, "--isvsvn-min"),
                         allow_debug=args.allow_debug)
    root_path = args.root_ca
    if root_path is None:
        from vsgx.evm import ATTESTATION_DIR, ROOT_CA_FILE, data_dir

        base = Path(args.data_dir) if args.data_dir else data_dir()
        root_path = str(base / ATTESTATION_DIR / ROOT_CA_FILE)
        if not Path(root_path).is_file():
            raise VsgxError(f"no --root-ca given and this installation has no root CA at "
                            f"{root_path}")
    try:
        root = load_certificate(read_file(root_path, "root CA"), f"root CA {root_path}")
    except PckError as exc:
        raise VsgxError(str(exc)) from None
    verified = verify_quote(read_file(args.quote, "quote"), root, policy)
    if args.json:
        print_json({**verified.to_json(), "root_ca": root_path})
        return 0
    body = verified.report_body
    print(f"quote verified to root CA {root.subject.rfc4514_string()} ({root_path})")
    print(f"  MRENCLAVE  {body.mrenclave.hex()}")
    print(f"  MRSIGNER   {body.mrsigner.hex()}")
    print(f"  ISVPRODID  {body.isvprodid}  ISVSVN {body.isvsvn}  "
          f"{'debug' if verified.to_json()['debug'] else 'production'}")
    print(f"  REPORTDATA {body.reportdata.hex()}")
    print(f"  QE         {verified.qe.name}, SVN {verified.quote.header.qe_svn}; PCE SVN "
          f"{verified.quote.header.pce_svn}; FMSPC {verified.sgx_extensions.fmspc.hex()}")
    for warning in verified.warnings:
        print(f"  warning: {warning}")
    return 0


@command("quote collateral")
def cmd_quote_collateral(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from vsgx.evm import (
        ATTESTATION_DIR,
        SECRET_FILE,
        Machine,
        PlatformConfig,
        PlatformSecrets,
        QuotingEnclave,
        data_dir,
        load_root_secret,
    )

    if not 1 <= args.days <= 3650:
        raise VsgxError("--days must be between 1 and 3650")
    base = Path(args.data_dir) if args.data_dir else data_dir()
    secret = base / SECRET_FILE
    if not secret.is_file():
        raise VsgxError(f"no EVM platform secret at {secret}: give the EVM's --data-dir")
    machine = Machine(PlatformConfig(), PlatformSecrets(load_root_secret(secret)))
    qe = QuotingEnclave(machine, base / ATTESTATION_DIR)
    collateral = qe.collateral(days=args.days)
    out = Path(args.output)
    files = {
        "tcb_info.json": collateral.tcb_info.encode(),
        "qe_identity.json": collateral.qe_identity.encode(),
        "root_ca_crl.der": collateral.root_ca_crl, "pck_crl.der": collateral.pck_crl,
        "pck_crl_issuer_chain.pem": collateral.pck_crl_issuer_chain.encode(),
        "tcb_info_issuer_chain.pem": collateral.tcb_info_issuer_chain.encode(),
        "qe_identity_issuer_chain.pem": collateral.qe_identity_issuer_chain.encode(),
        "root-ca.pem": qe.root_certificate.public_bytes(serialization.Encoding.PEM),
        "collateral.json": json.dumps(collateral.split_json(), indent=2).encode(),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VsgxError(f"cannot create {out}: {exc.strerror}") from None
    for name, data in files.items():
        write_file(out / name, data)
    print(f"wrote {len(files)} files to {out} (valid {args.days} days; root CA "
          f"{qe.root_certificate.subject.rfc4514_string()})")
    return 0
