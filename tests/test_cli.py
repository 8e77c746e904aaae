"""The vsgx command: signing, measuring, inspecting, and clean errors."""

from __future__ import annotations

import json
import re
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


# -- bad input: a one-line error, a non-zero exit, nothing lost ---------------------------
def test_keygen_refuses_an_existing_file_unless_forced(capsys, tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(b"my precious key")
    code, _, err = run(capsys, "keygen", "-o", key)
    assert code == 1 and _one_line_error(err) and "--force" in err
    assert key.read_bytes() == b"my precious key"
    public = tmp_path / "k.pub"
    public.write_bytes(b"old public key")
    fresh = tmp_path / "fresh.pem"
    code, _, err = run(capsys, "keygen", "-o", fresh, "--public", public)
    assert code == 1 and "k.pub exists" in err and not fresh.exists()  # nothing half-written
    assert public.read_bytes() == b"old public key"
    code, _, err = run(capsys, "keygen", "-o", key, "--public", public, "--force")
    assert code == 0, err
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    link = tmp_path / "link.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    code, _, err = run(capsys, "keygen", "-o", link)
    assert code == 1 and not (tmp_path / "elsewhere.pem").exists()  # no write through it


def test_keys_are_created_0600_and_never_chmodded(capsys, tmp_path, monkeypatch):
    import os
    from pathlib import Path

    def no_chmod(*args, **kwargs):
        raise AssertionError("a key file was chmod-ed after it was written")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)  # whatever the umask, the key is never readable by others
    try:
        code, _, err = run(capsys, "keygen", "-o", tmp_path / "k.pem")
    finally:
        os.umask(old_umask)
    assert code == 0, err
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600


def _serve_with_data_dir(capsys, tmp_path, data_dir):
    return run(capsys, "evm", "serve", "--listen", f"unix:{tmp_path / 'evm.sock'}",
               "--data-dir", data_dir, "--executor", "unicorn")


def test_a_data_dir_others_may_write_is_refused(capsys, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, _, err = _serve_with_data_dir(capsys, tmp_path, shared)
    assert code == 1 and _one_line_error(err) and "writable by group or others" in err
    assert not list(shared.iterdir())  # no secret was made there
    shared.chmod(0o770)
    code, _, err = _serve_with_data_dir(capsys, tmp_path, shared)
    assert code == 1 and "writable by group or others" in err
    shared.chmod(0o700)


def test_a_data_dir_or_secret_of_another_user_is_refused(capsys, tmp_path):
    import os

    from vsgx.errors import VsgxError
    from vsgx.evm.platform import load_root_secret

    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    code, _, err = _serve_with_data_dir(capsys, tmp_path, theirs)
    assert code == 1 and _one_line_error(err) and "belongs to uid 65534" in err
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    secret = mine / "platform-root-secret"
    secret.write_bytes(bytes(32))
    secret.chmod(0o600)
    os.chown(secret, 65534, 65534)
    with pytest.raises(VsgxError, match="belongs to uid 65534"):
        load_root_secret(secret)
    secret.unlink()
    secret.symlink_to(tmp_path / "planted")
    (tmp_path / "planted").write_bytes(bytes(32))
    with pytest.raises(VsgxError, match="cannot read the platform secret"):
        load_root_secret(secret)


def test_a_new_data_dir_is_made_private(tmp_path):
    from vsgx.evm.platform import load_root_secret

    secret = tmp_path / "new" / "dir" / "platform-root-secret"
    assert len(load_root_secret(secret)) == 32
    assert secret.parent.stat().st_mode & 0o777 == 0o700
    assert secret.stat().st_mode & 0o777 == 0o600


def _terabyte_elf(plain_enclave, tmp_path):
    import struct

    data = bytearray(plain_enclave.unsigned.read_bytes())
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    entsize, count = struct.unpack_from("<HH", data, 0x36)
    loads = [phoff + i * entsize for i in range(count)
             if struct.unpack_from("<I", data, phoff + i * entsize)[0] == 1]
    struct.pack_into("<Q", data, loads[-1] + 40, 0x7F00000000)  # p_memsz: 508 GiB
    elf = tmp_path / "huge.elf"
    elf.write_bytes(bytes(data))
    shutil.copy(plain_enclave.sigstruct, tmp_path / "huge.elf.sig")
    return elf


@pytest.mark.parametrize("command", ["measure", "inspect", "run", "sign"])
def test_a_plain_elf_claiming_terabytes_is_refused_up_front(capsys, tmp_path, plain_enclave,
                                                             signing_key, command):
    elf = _terabyte_elf(plain_enclave, tmp_path)
    extra = ["-k", signing_key, "-o", tmp_path / "out.sig"] if command == "sign" else []
    code, _, err = run(capsys, command, elf, *extra)
    assert code == 1 and _one_line_error(err), err
    assert re.search(r"adds 1331\d{5} pages \(508 GiB\); vsgx loads at most", err)
    assert not (tmp_path / "out.sig").exists()


def test_image_plans_are_bounded_by_what_a_secs_holds_and_vsgx_measures():
    from vsgx.errors import ImageError
    from vsgx.image.plan import MAX_MEASURED_PAGES, PageRun, check_plan_size

    check_plan_size(1 << 46, [PageRun(0, MAX_MEASURED_PAGES, 0x203, True)])
    with pytest.raises(ImageError, match="a SECS holds less than 2\\^47"):
        check_plan_size(1 << 47, [])
    with pytest.raises(ImageError, match="measures 4194305 pages"):
        check_plan_size(1 << 40, [PageRun(0, MAX_MEASURED_PAGES + 1, 0x203, True)])


def test_ecall_out_buffer_sizes_are_capped(capsys, sdk_enclave):
    code, _, err = run(capsys, "ecall", sdk_enclave.signed, "--edl", HELLO_DIR / "hello.edl",
                       "ecall_seal", "x", "-", "-", "99999999999")
    assert code == 1 and _one_line_error(err)
    assert "99999999999 bytes are more than vsgx passes in one buffer" in err


def test_an_edl_with_a_bad_size_reference_fails_when_read(capsys, sdk_enclave, tmp_path):
    edl = tmp_path / "bad.edl"
    edl.write_text("enclave { trusted { public int ecall_add(int a, int b); "
                   "public void f([out, size=missing] uint8_t *p); }; };")
    code, _, err = run(capsys, "ecall", sdk_enclave.signed, "--edl", edl, "ecall_add", "1", "2")
    assert code == 1 and _one_line_error(err) and "'missing' is neither a number" in err
    edl.write_text("enclave { trusted { public void f([out, count=99999999999] uint8_t *p); }; };")
    code, _, err = run(capsys, "ecall", sdk_enclave.signed, "--edl", edl)  # even to list it
    assert code == 1 and _one_line_error(err) and "out of range" in err


def test_demo_workdir_that_is_a_file(capsys, tmp_path):
    existing = tmp_path / "file"
    existing.write_text("keep me")
    code, _, err = run(capsys, "demo", "--workdir", existing)
    assert code == 1 and _one_line_error(err) and "is not a directory" in err
    assert existing.read_text() == "keep me"


def test_demo_removes_its_temporary_directory(capsys, tmp_path, monkeypatch):
    import tempfile

    from vsgx.cli import demo
    from vsgx.errors import VsgxError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    def failing_demo(args, workdir):
        made.append(workdir)
        (workdir / "signing-key.pem").write_text("secret")
        raise VsgxError("stopped half-way")

    monkeypatch.setattr(demo, "_demo", failing_demo)
    code, _, err = run(capsys, "demo")
    assert code == 1 and "stopped half-way" in err
    assert made and made[0].parent == tmp_path and not made[0].exists()
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_any_command_quietly(sdk_enclave):
    import os
    import subprocess
    import sys

    for argv in (["measure", sdk_enclave.signed], ["inspect", sdk_enclave.signed, "--layout"],
                 ["--help"], ["ecall", sdk_enclave.signed, "--edl", HELLO_DIR / "hello.edl"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line (| head -0)
        try:
            result = subprocess.run([sys.executable, "-m", "vsgx", *map(str, argv)],
                                    stdout=write_end, stderr=subprocess.PIPE, text=True,
                                    timeout=120)
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, argv
        assert result.returncode in (0, 141), (argv, result.returncode, result.stderr)


def test_evm_without_a_subcommand_exits_non_zero_with_usage(capsys):
    code, out, err = run(capsys, "evm")
    assert code == 2 and "usage: vsgx evm" in err and "subcommand" in err and not out
