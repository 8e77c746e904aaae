"""The vsgx command: signing, measuring, inspecting, and clean errors."""

from __future__ import annotations

import json
import shutil

import pytest

from vsgx.cli.main import main
from vsgx.samples import HELLO_DIR


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_keygen_sign_measure_inspect_sdk(capsys, tmp_path, sdk_enclave):
    key = tmp_path / "k.pem"
    code, out, _ = run(capsys, "keygen", "-o", key, "--public", tmp_path / "k.pub")
    assert code == 0 and key.stat().st_mode & 0o777 == 0o600
    unsigned = tmp_path / "hello.so"
    shutil.copy(sdk_enclave.unsigned, unsigned)
    code, out, _ = run(capsys, "sign", unsigned, "-k", key, "-c", HELLO_DIR / "hello.toml")
    assert code == 0 and "hello.signed.so" in out
    signed = tmp_path / "hello.signed.so"
    code, out, _ = run(capsys, "measure", signed, "--json")
    measured = json.loads(out)
    code, out, _ = run(capsys, "inspect", signed)
    assert code == 0
    assert "signature      valid" in out and "(match)" in out
    assert measured["mrenclave"] in out and measured["mrsigner"] in out
    code, out, _ = run(capsys, "inspect", signed, "--json", "--layout")
    info = json.loads(out)
    assert info["measurement_matches"] and info["signature"] == "SUCCESS"
    assert any(r["label"] == "TCS" for r in info["runs"])


def test_sign_and_inspect_plain(capsys, tmp_path, plain_enclave, signing_key):
    elf = tmp_path / "plain.elf"
    shutil.copy(plain_enclave.unsigned, elf)
    code, out, _ = run(capsys, "sign", elf, "-k", signing_key)
    assert code == 0 and (tmp_path / "plain.elf.sig").stat().st_size == 1808
    code, out, _ = run(capsys, "inspect", elf, "--layout")
    assert code == 0 and "plain ELF" in out and "(match)" in out and "TCS" in out


def test_gendata_catsig_commands(capsys, tmp_path, plain_enclave, signing_key):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from vsgx.crypto import load_private_key

    elf = tmp_path / "plain.elf"
    shutil.copy(plain_enclave.unsigned, elf)
    assert run(capsys, "gendata", elf, "-o", tmp_path / "data.bin")[0] == 0
    key = load_private_key(signing_key)
    sig = key.sign((tmp_path / "data.bin").read_bytes(), padding.PKCS1v15(), hashes.SHA256())
    (tmp_path / "sig.bin").write_bytes(sig)
    assert run(capsys, "keygen", "-o", tmp_path / "unused.pem")[0] == 0
    from vsgx.crypto.rsa import public_key_pem

    (tmp_path / "pub.pem").write_bytes(public_key_pem(key.public_key()))
    code, _, err = run(capsys, "catsig", elf, "--pubkey", tmp_path / "pub.pem", "--data",
                       tmp_path / "data.bin", "--signature", tmp_path / "sig.bin")
    assert code == 0, err
    assert run(capsys, "inspect", elf)[0] == 0
    (tmp_path / "sig.bin").write_bytes(bytes(384))
    code, _, err = run(capsys, "catsig", elf, "--pubkey", tmp_path / "pub.pem", "--data",
                       tmp_path / "data.bin", "--signature", tmp_path / "sig.bin")
    assert code == 1 and "does not verify" in err


def _one_line_error(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("vsgx ") and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x7fELF" + bytes(60),
                                     b"\x7fELF\x02\x01\x01" + bytes(200)])
def test_not_an_elf_gets_a_one_line_error(capsys, tmp_path, content):
    bad = tmp_path / "bad.so"
    bad.write_bytes(content)
    for cmd in ("inspect", "measure"):
        code, _, err = run(capsys, cmd, bad)
        assert code == 1 and _one_line_error(err), err


def test_truncated_metadata_and_tampered_signature(capsys, tmp_path, sdk_enclave):
    data = bytearray(sdk_enclave.signed.read_bytes())
    from vsgx.image import read_elf

    note = read_elf(bytes(data)).sections[".note.sgxmeta"]
    truncated = bytearray(data)
    struct_size_at = note.offset + 25 + 16
    truncated[struct_size_at:struct_size_at + 4] = (10**9).to_bytes(4, "little")
    (tmp_path / "t.so").write_bytes(truncated)
    code, _, err = run(capsys, "inspect", tmp_path / "t.so")
    assert code == 1 and _one_line_error(err) and "metadata" in err
    tampered = bytearray(data)
    tampered[note.offset + 25 + 64 + 516 + 7] ^= 1  # a SIGSTRUCT.SIGNATURE byte
    (tmp_path / "s.so").write_bytes(tampered)
    code, out, _ = run(capsys, "inspect", tmp_path / "s.so")
    assert code == 1 and "INVALID (INVALID_SIGNATURE)" in out


def test_bad_keys_and_configs(capsys, tmp_path, sdk_enclave):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    k = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    (tmp_path / "e65537.pem").write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    code, _, err = run(capsys, "sign", sdk_enclave.unsigned, "-k", tmp_path / "e65537.pem",
                       "-o", tmp_path / "x.so")
    assert code == 1 and _one_line_error(err) and "exponent" in err
    (tmp_path / "bad.toml").write_text("[enclave]\ntcs_count = 0\n")
    code, _, err = run(capsys, "sign", sdk_enclave.unsigned, "-k", sdk_enclave.key, "-c",
                       tmp_path / "bad.toml", "-o", tmp_path / "x.so")
    assert code == 1 and _one_line_error(err) and "tcs_count" in err
    (tmp_path / "bad2.toml").write_text("[enclave\n")
    code, _, err = run(capsys, "sign", sdk_enclave.unsigned, "-k", sdk_enclave.key, "-c",
                       tmp_path / "bad2.toml", "-o", tmp_path / "x.so")
    assert code == 1 and "TOML" in err
    code, _, err = run(capsys, "sign", tmp_path / "missing.so", "-k", sdk_enclave.key)
    assert code == 1 and "cannot read" in err


def test_plain_enclave_without_its_sigstruct(capsys, tmp_path, plain_enclave):
    elf = tmp_path / "alone.elf"
    shutil.copy(plain_enclave.unsigned, elf)
    code, _, err = run(capsys, "inspect", elf)
    assert code == 1 and "SIGSTRUCT" in err


# -- vsgx ecall -------------------------------------------------------------------
def test_ecall_prints_through_the_default_print_ocall(capsys, sdk_enclave):
    edl = HELLO_DIR / "hello.edl"
    code, out, err = run(capsys, "ecall", sdk_enclave.signed, "--edl", edl, "ecall_hello",
                         "world")
    assert code == 0, err
    assert out.splitlines() == ["Hello from inside the enclave, world!",
                                "ecall_hello returned 37"]
    code, out, _ = run(capsys, "ecall", sdk_enclave.signed, "--edl", edl, "ecall_add", "0x10",
                       "-6")
    assert code == 0 and out.strip() == "ecall_add returned 10"
    code, out, _ = run(capsys, "ecall", sdk_enclave.signed, "--edl", edl, "ecall_seal",
                       "hex:00ff", "-", "-", "128")
    assert code == 0 and "ecall_seal returned" in out and "sealed = " in out
    code, out, _ = run(capsys, "ecall", sdk_enclave.signed, "--edl", edl)
    assert code == 0 and "ECALL  12  private ecall_private" in out
    assert "OCALL   3  sgx_oc_cpuidex" in out


@pytest.mark.parametrize("args, message", [
    (["ecall_ocall_nop", "2"], "OCALL ocall_nop (index 1), which has no handler"),
    (["ecall_nope"], "no ECALL named 'ecall_nope'"),
    (["ecall_add", "1"], "missing 'b'"),
    (["ecall_add", "one", "2"], "'one' is not an integer"),
    (["ecall_add", "1", "2", "3"], "takes 2 arguments"),
    (["ecall_private", "1"], "SGX_ERROR_ECALL_NOT_ALLOWED"),
    (["ecall_target_info", "x"], "[out] buffer"),
])
def test_ecall_errors_are_one_line(capsys, sdk_enclave, args, message):
    code, _, err = run(capsys, "ecall", sdk_enclave.signed, "--edl", HELLO_DIR / "hello.edl",
                         *args)
    assert code == 1 and message in err and "Traceback" not in err
