"""Verification collateral for quotes under a vsgx root CA, in the formats
Intel's PCS publishes them (API v4): the TCB info and QE identity JSON
documents, signed by the TCB signing key, and the root CA and PCK CRLs.

A PCS document is ``{"tcbInfo":{...},"signature":"HEX"}`` (or
``"enclaveIdentity"``): HEX is the ECDSA P-256 signature, r || s big-endian,
over the exact bytes of the inner object's text. ``Collateral`` has the
members of Intel's sgx_ql_qve_collateral_t.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from vsgx.crypto.pck import Issuer, PckError, SgxExtensions, chain_pem, make_crl
from vsgx.crypto.quote import ecdsa_sign_raw

TCB_STATUS_UP_TO_DATE = "UpToDate"
QE_IDENTITY_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")  # all but MODE64BIT


@dataclass(frozen=True)
class Collateral:
    pck_crl_issuer_chain: str  # PEM: platform CA, root CA
    root_ca_crl: bytes  # DER
    pck_crl: bytes  # DER
    tcb_info_issuer_chain: str  # PEM: TCB signing certificate, root CA
    tcb_info: str  # the PCS document
    qe_identity_issuer_chain: str
    qe_identity: str

    def to_json(self) -> dict[str, str]:
        return {"pck_crl_issuer_chain": self.pck_crl_issuer_chain,
                "root_ca_crl": self.root_ca_crl.hex(), "pck_crl": self.pck_crl.hex(),
                "tcb_info_issuer_chain": self.tcb_info_issuer_chain, "tcb_info": self.tcb_info,
                "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
                "qe_identity": self.qe_identity}

    def split_json(self) -> dict[str, str]:
        """The same with each PCS document split into its signed body and
        its signature (hex): the layout of dcap-qvl's QuoteCollateralV3."""
        _, tcb_info, tcb_signature = split_signed_document(self.tcb_info)
        _, qe_identity, qe_signature = split_signed_document(self.qe_identity)
        return {**self.to_json(), "tcb_info": tcb_info, "tcb_info_signature": tcb_signature.hex(),
                "qe_identity": qe_identity, "qe_identity_signature": qe_signature.hex()}


def _time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_document(key_name: str, body: dict[str, Any],
                    signing_key: ec.EllipticCurvePrivateKey) -> str:
    text = json.dumps(body, separators=(",", ":"))
    signature = ecdsa_sign_raw(signing_key, text.encode())
    return f'{{"{key_name}":{text},"signature":"{signature.hex()}"}}'


_SIGNED = re.compile(r'\A\{"(tcbInfo|enclaveIdentity)":(\{.*\}),"signature":"([0-9a-fA-F]{128})"\}'
                     r"\s*\Z", re.DOTALL)


def split_signed_document(document: str) -> tuple[str, str, bytes]:
    """(key name, the signed body text, the 64-byte signature) of a PCS document."""
    match = _SIGNED.match(document)
    if match is None:
        raise PckError("not a signed PCS document ({\"tcbInfo\"|\"enclaveIdentity\":{...},"
                       "\"signature\":...})")
    return match.group(1), match.group(2), bytes.fromhex(match.group(3))


def tcb_info_body(platform: SgxExtensions, *, issue: datetime.datetime,
                  next_update: datetime.datetime, evaluation_number: int = 1) -> dict[str, Any]:
    """TCB info v3 for one platform type: one TCB level, the platform's own."""
    return {"id": "SGX", "version": 3, "issueDate": _time(issue),
            "nextUpdate": _time(next_update), "fmspc": platform.fmspc.hex().upper(),
            "pceId": platform.pceid.hex().upper(), "tcbType": 0,
            "tcbEvaluationDataNumber": evaluation_number,
            "tcbLevels": [{"tcb": {"sgxtcbcomponents": [{"svn": svn}
                                                        for svn in platform.tcb_components],
                                   "pcesvn": platform.pcesvn},
                           "tcbDate": _time(issue), "tcbStatus": TCB_STATUS_UP_TO_DATE}]}


def qe_identity_body(*, mrsigner: bytes, isvprodid: int, isvsvn: int, attributes: int,
                     miscselect: int, issue: datetime.datetime, next_update: datetime.datetime,
                     evaluation_number: int = 1) -> dict[str, Any]:
    """QE identity v2: the QE's MRSIGNER, ISVPRODID, masked MISCSELECT and
    ATTRIBUTES, and one TCB level at its ISVSVN."""
    flags = (attributes.to_bytes(8, "little") + bytes(8))
    expected = bytes(a & m for a, m in zip(flags, QE_IDENTITY_ATTRIBUTES_MASK, strict=True))
    return {"id": "QE", "version": 2, "issueDate": _time(issue),
            "nextUpdate": _time(next_update), "tcbEvaluationDataNumber": evaluation_number,
            "miscselect": miscselect.to_bytes(4, "little").hex().upper(),
            "miscselectMask": "FFFFFFFF", "attributes": expected.hex().upper(),
            "attributesMask": QE_IDENTITY_ATTRIBUTES_MASK.hex().upper(),
            "mrsigner": mrsigner.hex().upper(), "isvprodid": isvprodid,
            "tcbLevels": [{"tcb": {"isvsvn": isvsvn}, "tcbDate": _time(issue),
                           "tcbStatus": TCB_STATUS_UP_TO_DATE}]}


def make_collateral(*, root: Issuer, platform_ca: Issuer, tcb_signing: Issuer,
                    platform: SgxExtensions, qe_mrsigner: bytes, qe_isvprodid: int,
                    qe_isvsvn: int, qe_attributes: int, qe_miscselect: int,
                    now: datetime.datetime | None = None, days: int = 30) -> Collateral:
    """Collateral valid from ``now`` for ``days``: CRLs (nothing revoked),
    TCB info and QE identity signed by ``tcb_signing``."""
    now = now or datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=days)
    issue = now - datetime.timedelta(minutes=5)
    tcb_chain = chain_pem([tcb_signing.certificate, root.certificate]).decode()
    tcb_info = signed_document("tcbInfo", tcb_info_body(platform, issue=issue,
                                                        next_update=until), tcb_signing.key)
    qe_identity = signed_document("enclaveIdentity", qe_identity_body(
        mrsigner=qe_mrsigner, isvprodid=qe_isvprodid, isvsvn=qe_isvsvn,
        attributes=qe_attributes, miscselect=qe_miscselect, issue=issue, next_update=until),
        tcb_signing.key)
    return Collateral(
        pck_crl_issuer_chain=chain_pem([platform_ca.certificate, root.certificate]).decode(),
        root_ca_crl=make_crl(root, now=now, days=days),
        pck_crl=make_crl(platform_ca, now=now, days=days),
        tcb_info_issuer_chain=tcb_chain, tcb_info=tcb_info,
        qe_identity_issuer_chain=tcb_chain, qe_identity=qe_identity)
