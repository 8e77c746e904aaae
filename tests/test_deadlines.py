"""Every wait has a deadline, and Ctrl-C ends a blocked ECALL: a handshake
with a server that says nothing, an EVM whose AVM stops serving its page
fetches, a client that connects to an EVM and says nothing, and SIGINT in
an application whose enclave spins forever."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from vsgx.avm.driver import EnclaveLost
from vsgx.avm.remote import EvmRefused, connect_evm
from vsgx.channel import ChannelError, EvidencePolicy, Type
from vsgx.host import Avm, Enclave

from conftest import EvmProcess
from plain_ops import OP_TOUCH, PlainEnclave

DEV = EvidencePolicy(allow_unprotected=True)
SLACK = 15.0  # generous: a loaded machine must not fail these


def test_a_server_that_never_answers_the_handshake_is_given_up_on():
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ChannelError, match="the TLS handshake did not finish within 1 s"):
            connect_evm(f"tcp:127.0.0.1:{port}", DEV, warn=False, timeout=1.0)
        assert time.monotonic() - started < 1.0 + SLACK
    finally:
        silent.close()


def test_the_evm_drops_a_client_that_connects_and_says_nothing(tmp_path, plain_enclave):
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--peer-timeout", "1")
    try:
        mute = socket.socket(socket.AF_UNIX)
        mute.connect(str(tmp_path / "evm.sock"))
        mute.settimeout(1.0 + SLACK)
        started = time.monotonic()
        while mute.recv(4096):  # the EVM's side of a handshake nobody finishes, then EOF
            pass
        assert time.monotonic() - started < 1.0 + SLACK
        mute.close()
        with Enclave.load(plain_enclave.signed, evm=Avm(connect_evm(
                evm.address, DEV, warn=False))) as enclave:
            assert enclave.eenter(rdi=0, rsi=2).rsi == 4
            enclave.avm.close()
    finally:
        evm.stop()


def test_a_handshake_dripped_byte_by_byte_is_bounded_in_all(tmp_path):
    """A byte now and then does not stretch the EVM's handshake deadline."""
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--peer-timeout", "2")
    try:
        hello = _client_hello()
        drip = socket.socket(socket.AF_UNIX)
        drip.connect(str(tmp_path / "evm.sock"))
        started = time.monotonic()
        closed = False
        for byte in hello:
            try:
                drip.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            if time.monotonic() - started > 2.0 + SLACK:
                break
        drip.settimeout(SLACK)
        try:
            while not closed:  # what the EVM sent of its side, then the end
                closed = drip.recv(65536) == b""
        except TimeoutError:
            pass
        except OSError:  # reset: closed too
            closed = True
        assert closed and time.monotonic() - started < 2.0 + SLACK
        drip.close()
    finally:
        evm.stop()


def _client_hello() -> bytes:
    """The first bytes a TLS 1.3 client sends (its ClientHello)."""
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_bio(incoming, outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_an_avm_that_stops_serving_page_fetches_is_dropped_by_the_evm(tmp_path,
                                                                      plain_enclave):
    """The AVM's page server hangs (its only reader with it): the EVM's
    enclave thread waits for a page, PINGs, hears nothing, and after its
    deadline ends the session and frees the slice."""
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--peer-timeout", "2",
                     "--epc-mib", "1")
    try:
        remote = connect_evm(evm.address, DEV, warn=False)
        plain = PlainEnclave(Enclave.load(plain_enclave.signed, evm=Avm(remote)))
        buffer = plain.enclave.alloc(2 * 4096)
        hang = threading.Event()
        serve = remote.conn.handler

        def hung(conn, message):
            if message.type == Type.PAGE_FETCH:
                hang.wait(60)
            return serve(conn, message)

        remote.conn.handler = hung
        outcome: list[BaseException | None] = []

        def touch():
            try:
                plain.call(0, OP_TOUCH, buffer, 1)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=touch, daemon=True)
        thread.start()
        evm.wait_for("the AVM stopped answering: nothing received for", 2.0 + SLACK)
        hang.set()
        thread.join(SLACK)
        assert isinstance(outcome[0], EnclaveLost)
        # The slice is free again: the EVM has one.
        connect_evm(evm.address, DEV, warn=False).close()
    finally:
        evm.stop()


APP = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from plain_ops import PlainEnclave, OP_WAIT_FLAG
    from vsgx.avm.remote import EvmRefused, connect_evm
    from vsgx.channel import EvidencePolicy
    from vsgx.host import Avm, Enclave
    avm = Avm(connect_evm({address!r}, EvidencePolicy(allow_unprotected=True), warn=False))
    plain = PlainEnclave(Enclave.load({enclave!r}, evm=avm))
    print("ready", flush=True)
    try:
        with plain.enclave:
            plain.call(0, OP_WAIT_FLAG, 1, 10**15)  # spins until interrupted
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


def test_ctrl_c_ends_a_blocked_ecall_cleanly(tmp_path, plain_enclave):
    """SIGINT while the main thread waits for a spinning enclave: the
    KeyboardInterrupt reaches the application at once, the session is
    closed (its one slice serves the next client), and the interpreter
    exits without hanging."""
    evm = EvmProcess(f"unix:{tmp_path / 'evm.sock'}", tmp_path / "data", "--epc-mib", "1")
    try:
        app = subprocess.Popen([sys.executable, "-c", APP.format(
            tests=os.path.dirname(__file__), address=evm.address,
            enclave=str(plain_enclave.signed))], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert app.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # inside the ECALL
        started = time.monotonic()
        app.send_signal(signal.SIGINT)
        try:
            out, err = app.communicate(timeout=SLACK)
        except subprocess.TimeoutExpired:
            app.kill()
            raise AssertionError("the application did not end after Ctrl-C") from None
        assert time.monotonic() - started < SLACK
        assert app.returncode == 130 and out.strip() == "interrupted", err
        assert "Traceback" not in err, err
        # The session's one slice serves the next client once the EVM has
        # cleaned up after the interrupted one (slow on a loaded machine).
        deadline = time.monotonic() + SLACK
        while True:
            try:
                connect_evm(evm.address, DEV, warn=False).close()
                break
            except EvmRefused:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        evm.stop()
