"""Handlers of the signing and inspection commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from vsgx.arch.constants import SIGSTRUCT_TYPE_PRODUCTION, Attribute
from vsgx.arch.errors import SgxError
from vsgx.arch.pageinfo import Secinfo
from vsgx.arch.sigstruct import Sigstruct
from vsgx.cli.main import command, print_json, read_file, write_file, write_new_file
from vsgx.crypto import (
    check_sigstruct,
    generate_signing_key,
    load_private_key,
    load_public_key,
    mrsigner,
)
from vsgx.crypto.rsa import private_key_pem, public_key_pem
from vsgx.errors import VsgxError
from vsgx.image import BuildPlan, catsig, gendata, parse_config, plan_from_bytes, sign_enclave
from vsgx.image.config import EnclaveConfig


def load_config_file(path: str | None) -> EnclaveConfig:
    if path is None:
        return EnclaveConfig()
    try:
        text = read_file(path, "config").decode()
    except UnicodeDecodeError:
        raise VsgxError(f"{path}: the config is not UTF-8 text") from None
    return parse_config(text, path)


def sidecar_path(enclave: str, given: str | None) -> Path:
    return Path(given) if given else Path(enclave + ".sig")


def load_plan(enclave: str, sigstruct: str | None = None) -> BuildPlan:
    data = read_file(enclave, "enclave")
    side = sidecar_path(enclave, sigstruct)
    side_bytes = side.read_bytes() if side.is_file() else None
    if sigstruct and side_bytes is None:
        raise VsgxError(f"cannot read SIGSTRUCT {sigstruct}")
    return plan_from_bytes(data, side_bytes)


def default_output(enclave: str, plain: bool) -> str:
    if plain:
        return enclave + ".sig"
    path = Path(enclave)
    stem = path.name[:-3] if path.name.endswith(".so") else path.name
    return str(path.with_name(f"{stem}.signed.so"))


@command("keygen")
def cmd_keygen(args: argparse.Namespace) -> int:
    targets = [Path(args.output)] + ([Path(args.public)] if args.public else [])
    if len(targets) == 2 and targets[0].absolute() == targets[1].absolute():
        raise VsgxError("-o and --public name the same file")
    if not args.force:  # refuse before writing anything
        for target in targets:
            if target.exists() or target.is_symlink():
                raise VsgxError(f"{target} exists; pass --force to replace it")
    key = generate_signing_key()
    write_new_file(args.output, private_key_pem(key), mode=0o600, force=args.force,
                   what="private key")
    if args.public:
        write_new_file(args.public, public_key_pem(key.public_key()), mode=0o644,
                       force=args.force, what="public key")
    print(f"wrote {args.output} (RSA-3072, e = 3)")
    return 0


def _report_signed(output: str, plan_format: str, mrenclave: bytes, sig: Sigstruct) -> None:
    print(f"wrote {output} ({plan_format})")
    print(f"MRENCLAVE {mrenclave.hex()}")
    print(f"MRSIGNER  {mrsigner(sig.modulus).hex()}")


@command("sign")
def cmd_sign(args: argparse.Namespace) -> int:
    data = read_file(args.enclave, "enclave")
    config = load_config_file(args.config)
    key = load_private_key(args.key)
    signed = sign_enclave(data, config, key, resign=args.resign)
    plain = len(signed.data) == Sigstruct.SIZE
    output = args.output or default_output(args.enclave, plain)
    write_file(output, signed.data)
    _report_signed(output, "sidecar SIGSTRUCT" if plain else "SGX SDK format", signed.mrenclave,
                   signed.sigstruct)
    return 0


@command("gendata")
def cmd_gendata(args: argparse.Namespace) -> int:
    data = read_file(args.enclave, "enclave")
    write_file(args.output, gendata(data, load_config_file(args.config), resign=args.resign))
    print(f"wrote {args.output}: sign these 256 bytes with RSASSA-PKCS1-v1_5 / SHA-256")
    return 0


@command("catsig")
def cmd_catsig(args: argparse.Namespace) -> int:
    data = read_file(args.enclave, "enclave")
    signed = catsig(data, load_config_file(args.config), load_public_key(args.pubkey),
                    read_file(args.data, "signed data"), read_file(args.signature, "signature"),
                    resign=args.resign)
    plain = len(signed.data) == Sigstruct.SIZE
    output = args.output or default_output(args.enclave, plain)
    write_file(output, signed.data)
    _report_signed(output, "sidecar SIGSTRUCT" if plain else "SGX SDK format", signed.mrenclave,
                   signed.sigstruct)
    return 0


def _date(bcd: int) -> str:
    text = f"{bcd:08x}"
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if bcd else "(none)"


def describe(plan: BuildPlan) -> dict[str, object]:
    sig = plan.sigstruct
    computed = plan.measure()
    info: dict[str, object] = {
        "format": plan.format,
        "size": plan.ecreate.size,
        "ssaframesize": plan.ecreate.ssaframesize,
        "tcs_count": len(plan.tcs_offsets),
        "added_pages": plan.added_pages,
        "measured_pages": plan.measured_pages,
        "mrenclave": computed.hex(),
    }
    for key in ("metadata_version", "metadata_versions", "tcs_policy"):
        if key in plan.details:
            info[key] = plan.details[key]
    if sig is not None:
        check = check_sigstruct(plan.sigstruct_bytes or sig)
        info["sigstruct"] = {
            "vendor": sig.vendor, "type": sig.type, "date": _date(sig.date),
            "isvprodid": sig.isvprodid, "isvsvn": sig.isvsvn,
            "attributes": sig.attributes, "attributemask": sig.attributemask,
            "xfrm": sig.xfrm, "xfrmmask": sig.xfrmmask,
            "miscselect": sig.miscselect, "miscmask": sig.miscmask,
            "enclavehash": sig.enclavehash.hex(), "mrsigner": mrsigner(sig.modulus).hex(),
        }
        info["mrsigner"] = mrsigner(sig.modulus).hex()
        info["signature"] = check.name
        info["measurement_matches"] = sig.enclavehash == computed
    return info


def _flags(value: int) -> str:
    names = [f.name for f in Attribute if value & f and f.name]
    return f"{value:#x}" + (f" ({'|'.join(names)})" if names else "")


@command("measure")
def cmd_measure(args: argparse.Namespace) -> int:
    plan = load_plan(args.enclave, args.sigstruct)
    mrenclave = plan.measure()
    signer = mrsigner(plan.sigstruct.modulus).hex() if plan.sigstruct else None
    if args.json:
        print_json({"mrenclave": mrenclave.hex(), "mrsigner": signer})
    else:
        print(f"MRENCLAVE {mrenclave.hex()}")
        print(f"MRSIGNER  {signer or '(no SIGSTRUCT)'}")
    return 0


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    plan = load_plan(args.enclave, args.sigstruct)
    info = describe(plan)
    ok = info.get("signature") == SgxError.SUCCESS.name and info.get("measurement_matches")
    if args.json:
        if args.layout:
            info["runs"] = [{"offset": r.offset, "pages": r.count, "secinfo": r.secinfo_flags,
                             "measured": r.measured, "label": r.label} for r in plan.runs]
        print_json(info)
        return 0 if ok else 1
    print_inspection(args.enclave, plan, info, args.layout)
    return 0 if ok else 1


def print_inspection(name: str, plan: BuildPlan, info: dict[str, object], layout: bool) -> None:
    fmt = {"sgx-sdk": "SGX SDK signed enclave", "plain-elf": "plain ELF + sidecar SIGSTRUCT"}
    title = fmt.get(plan.format, plan.format)
    if "metadata_version" in info:
        title += (f", metadata {info['metadata_version']} "
                  f"(copies: {', '.join(info['metadata_versions'])})")  # type: ignore[arg-type]
    print(f"enclave        {name}  [{title}]")
    print(f"size           {plan.ecreate.size:#x}, SSA frame {plan.ecreate.ssaframesize} page(s),"
          f" {info['tcs_count']} TCS" + (f" ({info['tcs_policy']})" if "tcs_policy" in info
                                        else ""))
    print(f"pages          {plan.added_pages} added, {plan.measured_pages} measured")
    if layout:
        for run in plan.runs:
            desc = Secinfo(flags=run.secinfo_flags).describe()
            print(f"  {run.offset:#012x} {run.count:6d} x {desc:8s} "
                  f"{'EADD+EEXTEND' if run.measured else 'EADD       '}  {run.label}")
        for region in plan.regions:
            print(f"  {region.offset:#012x} {region.count:6d} x (not added: {region.kind.value})"
                  f"  {region.label}")
    sig = plan.sigstruct
    if sig is None:
        print("SIGSTRUCT      (none)")
        return
    kind = "production" if sig.type & SIGSTRUCT_TYPE_PRODUCTION else "debug"
    print(f"SIGSTRUCT      vendor {sig.vendor:#06x}, {kind} signer, date {_date(sig.date)}")
    print(f"  ISVPRODID    {sig.isvprodid}   ISVSVN {sig.isvsvn}")
    print(f"  ATTRIBUTES   {_flags(sig.attributes)} mask {sig.attributemask:#x}")
    print(f"  XFRM         {sig.xfrm:#x} mask {sig.xfrmmask:#x}")
    print(f"  MISCSELECT   {sig.miscselect:#x} mask {sig.miscmask:#x}")
    print(f"MRSIGNER       {info['mrsigner']}")
    signature = info["signature"]
    print("signature      " + ("valid (RSA-3072, e = 3, Q1 and Q2 correct)"
                               if signature == SgxError.SUCCESS.name
                               else f"INVALID ({signature})"))
    print(f"MRENCLAVE      computed {info['mrenclave']}")
    print(f"               signed   {sig.enclavehash.hex()}  "
          + ("(match)" if info["measurement_matches"] else "(MISMATCH)"))
