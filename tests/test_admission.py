"""Who may open an EVM session, and what a client hears when it may not:
uids on Unix sockets, client keys on TCP (mutual TLS), a full EVM, one
client against others, idle sessions, slices handed on after a session
ends, the AVM's trust options, and bad addresses on the command line."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vsgx.avm.driver import EnclaveLost
from vsgx.avm.remote import EvmRefused, RemoteEvm, connect_evm
from vsgx.channel import (
    AttestationError,
    ClientIdentity,
    Connection,
    EvidencePolicy,
    TlsStream,
    client_context,
    connect,
    parse_address,
)
from vsgx.cli.main import main
from vsgx.host import Avm, Enclave

from conftest import ROOT_SECRET, EvmProcess, client_fingerprint
from plain_ops import OP_SET_FLAG, OP_WAIT_FLAG, PlainEnclave

DEV = EvidencePolicy(allow_unprotected=True)
BOUND = 30.0  # generous: how long a loaded machine may take to show what we wait for


def _wait_for(condition, what: str, limit: float = BOUND) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _stranger() -> ClientIdentity:
    """An AVM key nobody has admitted."""
    return ClientIdentity(ec.generate_private_key(ec.SECP256R1()))


# -- Unix sockets: the peer's uid ---------------------------------------------------
def test_an_unlisted_uid_is_refused_and_told_how_to_be_admitted(tmp_path):
    uid = os.getuid()
    other = 54321 if uid != 54321 else 54322
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--allow-uid",
                     str(other))
    try:
        with pytest.raises(EvmRefused) as refused:
            connect_evm(evm.address, DEV, warn=False)
        assert str(refused.value) == (f"the EVM refused the session: this EVM does not admit "
                                      f"uid {uid}; start it with --allow-uid {uid}")
        evm.wait_for(f"refused uid {uid}")
        # Another uid is admitted, so others may reach the socket (SO_PEERCRED decides).
        assert stat.S_IMODE(os.stat(tmp_path / "evm.sock").st_mode) == 0o666
    finally:
        evm.stop()


def test_a_listed_uid_is_admitted(tmp_path, plain_enclave):
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--allow-uid",
                     "54321", "--allow-uid", str(os.getuid()))
    try:
        avm = Avm(connect_evm(evm.address, DEV, warn=False))
        with Enclave.load(plain_enclave.signed, evm=avm) as enclave:
            assert enclave.eenter(rdi=0, rsi=3).rsi == 6
        avm.close()
        evm.wait_for("admits uid")
    finally:
        evm.stop()


# -- TCP: the client's key ------------------------------------------------------------
def test_an_unlisted_client_key_is_refused_with_its_fingerprint(tmp_path, capsys):
    evm = EvmProcess("tcp:127.0.0.1:0", tmp_path / "data", "--allow-client", "ab" * 32)
    try:
        mine = client_fingerprint()
        with pytest.raises(EvmRefused) as refused:
            connect_evm(evm.address, DEV, warn=False)
        assert str(refused.value) == (f"the EVM refused the session: this EVM does not admit "
                                      f"client {mine}; start it with --allow-client {mine}")
        assert main(["evm", "client-id"]) == 0
        assert capsys.readouterr().out.strip() == mine
        # A client that presents no key at all (not a vsgx AVM, or an old one).
        sock = connect(parse_address(evm.address))
        stream = TlsStream(sock, client_context(None), server_side=False)
        stream.handshake()
        with pytest.raises(EvmRefused, match="presented none"):
            RemoteEvm(Connection(stream, None, peer="the EVM"))
    finally:
        evm.stop()


def test_listed_client_keys_are_admitted_from_the_command_line_and_a_file(tmp_path,
                                                                          plain_enclave):
    stranger = _stranger()
    listed = tmp_path / "clients.txt"
    listed.write_text(f"# the AVMs of the lab\n{client_fingerprint()}  # mine\n\n")
    evm = EvmProcess("tcp:127.0.0.1:0", tmp_path / "data", "--allow-clients-file", str(listed),
                     "--allow-client", "sha256:" + stranger.fingerprint.upper())
    try:
        for identity in (None, stranger):
            avm = Avm(connect_evm(evm.address, DEV, warn=False, identity=identity))
            with Enclave.load(plain_enclave.signed, evm=avm) as enclave:
                assert enclave.eenter(rdi=0, rsi=5).rsi == 10
            avm.close()
        with pytest.raises(EvmRefused, match="does not admit client"):
            connect_evm(evm.address, DEV, warn=False, identity=_stranger())
        evm.wait_for("admits 2 client keys")
    finally:
        evm.stop()


def test_allow_any_client_admits_anyone_and_says_so_loudly(tmp_path):
    evm = EvmProcess("tcp:127.0.0.1:0", tmp_path / "data", "--allow-any-client")
    try:
        connect_evm(evm.address, DEV, warn=False, identity=_stranger()).close()
        sock = connect(parse_address(evm.address))
        stream = TlsStream(sock, client_context(None), server_side=False)
        stream.handshake()
        RemoteEvm(Connection(stream, None, peer="the EVM")).close()
        evm.wait_for("WARNING: --allow-any-client: ANY client")
    finally:
        evm.stop()


@pytest.mark.parametrize(("flags", "why"), [
    (["--allow-client", "12"], "not a SHA-256 key fingerprint"),
    (["--allow-clients-file", "/nonexistent/list"], "cannot read /nonexistent/list"),
    (["--allow-uid", "-1"], "is not a user id"),
    (["--idle-timeout", "0"], "positive number of seconds"),
    (["--idle-timeout", "nan"], "positive number of seconds"),
    (["--max-client-sessions", "0"], "positive whole number"),
])
def test_bad_admission_options_are_one_line_errors(tmp_path, flags, why):
    result = _serve_command("tcp:127.0.0.1:0", tmp_path, *flags)
    last = result.stderr.strip().splitlines()[-1]  # after argparse's usage, if it is its error
    assert result.returncode != 0 and last.startswith("vsgx evm serve: error:") and why in last


def test_uid_and_key_lists_apply_to_their_own_kind_of_socket(tmp_path):
    result = _serve_command(f"unix:{tmp_path / 'e.sock'}", tmp_path, "--allow-client", "ab" * 32)
    assert result.returncode == 1 and "a Unix socket admits by uid" in result.stderr
    result = _serve_command("tcp:127.0.0.1:0", tmp_path, "--allow-uid", "0")
    assert result.returncode == 1 and "TCP and vsock admit by key" in result.stderr


# -- capacity ------------------------------------------------------------------------
def test_a_client_beyond_the_capacity_hears_evm_full(tmp_path):
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--epc-mib", "2")
    try:
        first, second = (connect_evm(evm.address, DEV, warn=False) for _ in range(2))
        with pytest.raises(EvmRefused) as refused:
            connect_evm(evm.address, DEV, warn=False)
        assert str(refused.value) == ("the EVM refused the session: EVM full (2 sessions of "
                                      "1 MiB in use)")
        first.close()
        connect_evm(evm.address, DEV, warn=False).close()  # its slice, at once
        second.close()
    finally:
        evm.stop()


def test_one_client_cannot_take_every_slice(tmp_path):
    """With several clients admitted, one holds at most half the slices
    (rounded up): the others still get theirs."""
    evm = EvmProcess("tcp:127.0.0.1:0", tmp_path / "data", "--epc-mib", "4",
                     "--allow-any-client")
    try:
        evm.wait_for("at most 2 sessions per client")
        greedy = [connect_evm(evm.address, DEV, warn=False) for _ in range(2)]
        with pytest.raises(EvmRefused, match="EVM full for this client: it holds 2 sessions"):
            connect_evm(evm.address, DEV, warn=False)
        other = _stranger()
        others = [connect_evm(evm.address, DEV, warn=False, identity=other) for _ in range(2)]
        for remote in greedy + others:
            remote.close()
    finally:
        evm.stop()


def test_a_flood_of_mute_connections_from_one_host_does_not_lock_others_out(tmp_path):
    """Connections that never finish their handshake: a few from one host
    wait (for a bounded time), the rest are dropped at once, and a client
    from another address is served as usual."""
    from vsgx.evm.manager import PENDING_PER_SOURCE

    evm = EvmProcess("tcp:127.0.0.1:0", tmp_path / "data")
    port = int(evm.address.rsplit(":", 1)[1])
    mute = []
    try:
        for _ in range(PENDING_PER_SOURCE + 12):
            sock = socket.socket()
            sock.bind(("127.0.0.2", 0))  # all of loopback is this machine
            sock.connect(("127.0.0.1", port))
            mute.append(sock)
        dropped = 0
        for sock in mute:
            sock.settimeout(0.5)
            try:
                dropped += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert dropped >= 12
        started = time.monotonic()
        connect_evm(evm.address, DEV, warn=False).close()
        assert time.monotonic() - started < BOUND
    finally:
        for sock in mute:
            sock.close()
        evm.stop()


# -- idle sessions and long ECALLs ----------------------------------------------------
def test_an_idle_session_ends_but_a_long_ecall_is_neither_idle_nor_silence(tmp_path,
                                                                          plain_enclave):
    """One slice, an idle timeout of 1 s and an AVM deadline of 1 s: an ECALL
    that runs 3 s (until another thread sets the flag it waits for) comes
    back; then the session, left alone, is closed, the client is told why,
    and the slice serves the next client."""
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--epc-mib", "1",
                     "--idle-timeout", "1")
    try:
        avm = Avm(connect_evm(evm.address, DEV, warn=False, timeout=1.0))
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=avm))
        threading.Timer(3.0, plain.call, args=(1, OP_SET_FLAG, 77)).start()
        result, words = plain.call(0, OP_WAIT_FLAG, 77, 10**15)
        assert result.kind == "eexit" and words[3] == 1
        evm.wait_for("closing the idle session")
        with pytest.raises(EnclaveLost, match="the EVM closed the idle session"):
            plain.enclave.eenter(rdi=0, rsi=1)
        avm.close()
        connect_evm(evm.address, DEV, warn=False).close()
    finally:
        evm.stop()


# -- slices handed on -------------------------------------------------------------------
def test_a_slice_closed_a_moment_ago_goes_to_the_next_client(tmp_path, plain_enclave):
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--epc-mib", "1")
    try:
        for round_ in range(6):
            remote = connect_evm(evm.address, DEV, warn=False)
            avm = Avm(remote)
            enclave = Enclave.load(plain_enclave.signed, evm=avm)
            assert enclave.eenter(rdi=0, rsi=round_).rsi == 2 * round_
            if round_ % 2:
                avm.close()  # BYE
            else:
                remote.conn.stream.close()  # gone without a word
    finally:
        evm.stop()


@pytest.fixture
def inprocess_manager(tmp_path):
    """An EVM with one slice, served from this process."""
    from vsgx.evm.manager import EnclaveManager
    from vsgx.evm.platform import PlatformConfig
    from vsgx.evm.vm import EnclaveVM

    vm = EnclaveVM(PlatformConfig(epc_pages=256), root_secret=ROOT_SECRET, executor="unicorn")
    logs: list[str] = []
    manager = EnclaveManager(vm, session_epc_pages=256, log=logs.append)
    manager.logs = logs  # type: ignore[attr-defined]
    ready = threading.Event()
    thread = threading.Thread(target=manager.serve, args=(f"unix:{tmp_path / 'evm.sock'}",),
                              kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(BOUND)
    yield manager
    manager.stop()
    thread.join(BOUND)


def test_a_slice_is_handed_out_only_after_its_cleanup(inprocess_manager, plain_enclave):
    manager = inprocess_manager
    vm = manager.vm
    events: list[str] = []
    clear_epc = vm.clear_epc

    def slow_clear(base, size):  # a cleanup that lags behind the next client
        events.append(f"cleanup starts, {manager.sessions_served} slices handed out")
        time.sleep(1.0)
        clear_epc(base, size)
        events.append(f"cleanup done, {manager.sessions_served} slices handed out")

    vm.clear_epc = slow_clear
    first = Avm(connect_evm(manager.address, DEV, warn=False))
    Enclave.load(plain_enclave.signed, evm=first).eenter(rdi=0, rsi=1)
    first.close()
    second = Avm(connect_evm(manager.address, DEV, warn=False))
    assert events == ["cleanup starts, 1 slices handed out",
                      "cleanup done, 1 slices handed out"]
    assert manager.sessions_served == 2
    with Enclave.load(plain_enclave.signed, evm=second) as enclave:
        assert enclave.eenter(rdi=0, rsi=4).rsi == 8
    second.close()


def test_a_slice_that_cannot_be_cleared_is_never_handed_out(inprocess_manager,
                                                            plain_enclave):
    """An AVM leaves without removing its enclave, and the session's cleanup
    cannot remove it (destroying and sweeping the slice do nothing here): the
    slice still holds valid EPC pages."""
    manager = inprocess_manager
    vm = manager.vm
    destroy, clear_epc = vm.destroy, vm.clear_epc
    vm.destroy = lambda secs: None
    vm.clear_epc = lambda base, size: None
    try:
        remote = connect_evm(manager.address, DEV, warn=False)
        Enclave.load(plain_enclave.signed, evm=Avm(remote))
        remote.close()  # the channel only: no EREMOVE
        _wait_for(lambda: any("could not be cleared" in line for line in manager.logs),
                  "the EVM logs the lost slice")
        with pytest.raises(EvmRefused, match=r"EVM full \(0 sessions"):
            connect_evm(manager.address, DEV, warn=False)
    finally:
        vm.destroy, vm.clear_epc = destroy, clear_epc


# -- the AVM's trust options -------------------------------------------------------------
def _outbound_ip() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent
        ip = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if ip.startswith("127.") else ip


def test_an_unattested_evm_off_loopback_is_refused_unless_pinned_or_allowed(tmp_path,
                                                                             plain_enclave,
                                                                             capsys):
    ip = _outbound_ip()
    if ip is None:
        pytest.skip("this machine has no address other than loopback")
    evm = EvmProcess(f"tcp:{ip}:0", tmp_path / "data")
    try:
        key = evm.wait_for("(an AVM pins it").split("TLS key ", 1)[1].split()[0]
        with pytest.raises(AttestationError, match=f"not on this machine: pin its key {key}"):
            connect_evm(evm.address, warn=False)
        connect_evm(evm.address, EvidencePolicy(pinned_keys=frozenset({key})),
                    warn=False).close()
        connect_evm(evm.address, EvidencePolicy(allow_unprotected=True), warn=False).close()
        with pytest.raises(AttestationError, match="not the pinned one"):
            connect_evm(evm.address, EvidencePolicy(pinned_keys=frozenset({"ab" * 32})),
                        warn=False)
        # The same from the command line.
        code = main(["run", str(plain_enclave.signed), "--evm", evm.address])
        assert code == 1 and "pin its key" in capsys.readouterr().err
        code = main(["run", str(plain_enclave.signed), "--evm", evm.address, "--evm-pin", key])
        out = capsys.readouterr()
        assert code == 0 and "EINIT ok" in out.out and "WARNING: the EVM offers no SEV" in out.err
        code = main(["run", str(plain_enclave.signed), "--evm", evm.address,
                     "--allow-unattested", "--evm-timeout", "5"])
        assert code == 0
        capsys.readouterr()
        code = main(["run", str(plain_enclave.signed), "--evm", evm.address, "--evm-pin", key,
                     "--require-snp"])
        err = capsys.readouterr().err
        assert code == 1 and "requires SEV-SNP" in err and err.count("\n") == 1
    finally:
        evm.stop()


@pytest.mark.parametrize(("flags", "why"), [
    (["--evm-pin", "xyz"], "not a SHA-256 key fingerprint"),
    (["--require-snp", "--allow-unattested"], "contradict"),
])
def test_bad_trust_options_are_one_line_errors(capsys, plain_enclave, flags, why):
    code = main(["run", str(plain_enclave.signed), "--evm", "unix:/nonexistent.sock", *flags])
    err = capsys.readouterr().err
    assert code == 1 and why in err and err.count("\n") == 1


# -- addresses on the command line --------------------------------------------------------
def _serve_command(listen: str, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    data = tmp_path / "serve-data"
    data.mkdir(exist_ok=True)
    (data / "platform-root-secret").write_bytes(ROOT_SECRET)
    (data / "platform-root-secret").chmod(0o600)
    return subprocess.run(
        [sys.executable, "-m", "vsgx", "evm", "serve", "--listen", listen, "--data-dir",
         str(data), "--epc-mib", "1", "--session-epc-mib", "1", "--executor", "unicorn",
         *flags], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("listen", "why"), [
    ("tcp:127.0.0.1:70000", "port 70000 is outside 0-65535"),
    ("tcp:127.0.0.1:-5", "not a number"),
    ("tcp:::1:7000", "write an IPv6 address in brackets"),
    ("vsock:1:99999999999", "outside 0-4294967295"),
    ("unix:", "the socket path is empty"),
])
def test_evm_serve_refuses_bad_addresses(tmp_path, listen, why):
    result = _serve_command(listen, tmp_path)
    assert result.returncode == 1 and why in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_evm_serve_never_replaces_a_file_a_symlink_or_a_directory(tmp_path):
    regular = tmp_path / "file.sock"
    regular.write_text("precious")
    link = tmp_path / "link.sock"
    link.symlink_to(regular)
    for path, why in [(regular, "not a socket"), (link, "symbolic link"),
                      (tmp_path, "is a directory"),
                      (tmp_path / "missing" / "evm.sock", "does not exist")]:
        result = _serve_command(f"unix:{path}", tmp_path)
        assert result.returncode == 1 and why in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert regular.read_text() == "precious" and link.is_symlink()


def test_evm_serve_refuses_a_live_evms_socket_and_that_evm_serves_on(tmp_path, plain_enclave):
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data")
    try:
        result = _serve_command(evm.address, tmp_path)
        assert result.returncode == 1 and "listening there" in result.stderr
        avm = Avm(connect_evm(evm.address, DEV, warn=False))
        with Enclave.load(plain_enclave.signed, evm=avm) as enclave:
            assert enclave.eenter(rdi=0, rsi=6).rsi == 12
        avm.close()
    finally:
        evm.stop()


def test_a_stale_socket_is_replaced_and_the_evm_removes_its_own_on_exit(tmp_path):
    path = tmp_path / "evm.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    evm = EvmProcess(f"unix:{path}", tmp_path / "data")
    try:
        connect_evm(evm.address, DEV, warn=False).close()
    finally:
        evm.stop()
    assert evm.process.returncode == 0 and not path.exists(), evm.output()[-3000:]


def test_an_evm_on_ipv6_loopback(tmp_path, plain_enclave):
    evm = EvmProcess("tcp:[::1]:0", tmp_path / "data")
    try:
        assert evm.address.startswith("tcp:[::1]:")
        avm = Avm(connect_evm(evm.address, warn=False))  # loopback: the default policy
        with Enclave.load(plain_enclave.signed, evm=avm) as enclave:
            assert enclave.eenter(rdi=0, rsi=7).rsi == 14
        avm.close()
    finally:
        evm.stop()


@pytest.mark.parametrize(("evm", "why"), [
    ("tcp:127.0.0.1:99999", "port 99999 is outside 1-65535"),
    ("tcp:127.0.0.1:0", "port 0 is outside 1-65535"),
    ("tcp:::1:7000", "write an IPv6 address in brackets"),
    ("tcp:[::1:7000", "must be followed by :PORT"),
    ("vsock::1", "CID '' is not a number"),
    ("unix:{tmp}", "is a directory, not a socket"),
    ("unix:{tmp}/none.sock", "No such file or directory"),
])
def test_run_refuses_bad_evm_addresses(capsys, tmp_path, plain_enclave, evm, why):
    code = main(["run", str(plain_enclave.signed), "--evm", evm.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and why in err and err.count("\n") == 1, err
