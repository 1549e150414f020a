"""Every setting that names a file, and every SASL login, fails at start-up in one line.

Through the real command line (`python -m worker run` in a process of its own, settings in
QA_ variables): exit code 2, exactly one line on stderr naming the setting and what is wrong,
and no line of the file's content anywhere in the output. Before anything connects: nothing
listens on the broker address, and the line comes before the worker's first log line. The bad
files are generated here: certificates and keys with `cryptography`, the rest by hand.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.client_security import client_ssl_context
from worker.config import Settings, describe, env_name
from worker.errors import ConfigError
from worker.model.manifest import Manifest, TokenizerInfo
from worker.observability.logs import escape
from worker.preflight import check_settings

# In a file that is not PEM, or a PEM block that does not parse: must never be echoed.
MARKER = "not-for-the-log-8d1f0c"
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Credentials:
    """PEM files of a CA, a client certificate it signed and that certificate's key."""

    ca: bytes
    certificate: bytes
    key: bytes
    key_traditional: bytes
    other_key: bytes
    key_encrypted: bytes
    key_encrypted_traditional: bytes
    certificate_der: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(
    key: ec.EllipticCurvePrivateKey, form: serialization.PrivateFormat, password: bytes = b""
) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, form, encryption)


def make_credentials() -> Credentials:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA"))
        .issuer_name(_name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("qa-worker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    pkcs8 = serialization.PrivateFormat.PKCS8
    traditional = serialization.PrivateFormat.TraditionalOpenSSL
    return Credentials(
        ca=ca.public_bytes(serialization.Encoding.PEM),
        certificate=certificate.public_bytes(serialization.Encoding.PEM),
        key=_pem(key, pkcs8),
        key_traditional=_pem(key, traditional),
        other_key=_pem(ec.generate_private_key(ec.SECP256R1()), pkcs8),
        key_encrypted=_pem(key, pkcs8, b"pass phrase"),
        key_encrypted_traditional=_pem(key, traditional, b"pass phrase"),
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
    )


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    return make_credentials()


def corrupt(pem: bytes) -> bytes:
    """`pem` with its first base64 line replaced: the labels stay, the block no longer parses."""
    lines = pem.splitlines(keepends=True)
    lines[1] = b"@@@@" + MARKER.encode() + b"@@@@\n"
    return b"".join(lines)


def content_lines(content: bytes) -> list[bytes]:
    """The lines of a file worth searching for in output: long enough to be its own, and not a
    PEM block's armour (`-----BEGIN PRIVATE KEY-----` says what is expected, not what is held)."""
    lines = (line.strip() for line in content.splitlines())
    return [line for line in lines if len(line) >= 12 and not line.startswith(b"-----")]


def drop_file_permission_override() -> list[str]:
    """A command prefix under which root too is refused files it has no permission bits for."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: no file can be made unreadable")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def run_worker(
    environ: dict[str, str], prefix: Iterable[str] = ()
) -> subprocess.CompletedProcess[bytes]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("QA_")}
    # No broker listens there: a check that came after connecting would hang, not pass.
    base["QA_BROKER"] = "127.0.0.1:9"
    return subprocess.run(
        [*prefix, sys.executable, "-m", "worker", "run"],
        env={**base, **environ},
        capture_output=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def assert_fails_in_one_line(
    result: subprocess.CompletedProcess[bytes], setting: str, fragment: str, files: Iterable[bytes]
) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stdout == b""
    assert result.stderr.endswith(b"\n") and result.stderr.count(b"\n") == 1, result.stderr
    line = result.stderr.decode()
    assert line.startswith("qa-worker run: "), line
    assert describe(setting) in line and fragment in line, line
    assert b"Traceback" not in output
    assert MARKER.encode() not in output
    for content in files:
        for piece in content_lines(content):
            assert piece not in output, (piece, line)
    return line


# Each case: the setting that fails; the settings, a function of the credentials and a folder
# (bytes are written to a file there, whose path the setting takes); a fragment of the line.
Case = tuple[str, Callable[[Credentials, Path], dict[str, bytes | str]], str]


def tls(protocol: str = "SSL", **files: bytes | str) -> dict[str, bytes | str]:
    return {"security_protocol": protocol, **files}


TLS_CASES: dict[str, Case] = {
    "ca: missing": (
        "ssl_cafile",
        lambda c, d: tls(ssl_cafile=str(d / "absent.pem")),
        "does not exist",
    ),
    "ca: a directory": ("ssl_cafile", lambda c, d: tls(ssl_cafile=str(d)), "is a directory"),
    "ca: not PEM": ("ssl_cafile", lambda c, d: tls(ssl_cafile=MARKER.encode() * 3), "is not PEM"),
    "ca: DER": ("ssl_cafile", lambda c, d: tls(ssl_cafile=c.certificate_der), "is not PEM"),
    "ca: a private key": (
        "ssl_cafile",
        lambda c, d: tls(ssl_cafile=c.key),
        "holds a private key, not CA certificates",
    ),
    "ca: a broken certificate": (
        "ssl_cafile",
        lambda c, d: tls(ssl_cafile=corrupt(c.ca)),
        "cannot be loaded as CA certificates",
    ),
    "certificate: missing": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=str(d / "absent.pem"), ssl_keyfile=c.key),
        "does not exist",
    ),
    "certificate: a directory": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=str(d), ssl_keyfile=c.key),
        "is a directory",
    ),
    "certificate: a private key": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=c.key, ssl_keyfile=c.key),
        "holds a private key, not a certificate",
    ),
    "certificate: not PEM": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=c.certificate_der, ssl_keyfile=c.key),
        "is not PEM",
    ),
    "certificate: no key anywhere": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=c.certificate),
        "holds no private key",
    ),
    "certificate: a broken one": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=corrupt(c.certificate), ssl_keyfile=c.key),
        "cannot be loaded as a certificate and its key",
    ),
    "key: missing": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_certfile=c.certificate, ssl_keyfile=str(d / "absent.pem")),
        "does not exist",
    ),
    "key: a directory": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_certfile=c.certificate, ssl_keyfile=str(d)),
        "is a directory",
    ),
    "key: a certificate": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_certfile=c.certificate, ssl_keyfile=c.certificate),
        "holds a certificate, not a private key",
    ),
    "key: not PEM": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_certfile=c.certificate, ssl_keyfile=MARKER.encode()),
        "is not PEM",
    ),
    "key: another certificate's": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_cafile=c.ca, ssl_certfile=c.certificate, ssl_keyfile=c.other_key),
        "does not match the certificate",
    ),
    "key: encrypted (PKCS#8)": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_certfile=c.certificate, ssl_keyfile=c.key_encrypted),
        "encrypted private key",
    ),
    "key: encrypted (traditional)": (
        "ssl_keyfile",
        lambda c, d: tls(
            "SASL_SSL", ssl_certfile=c.certificate, ssl_keyfile=c.key_encrypted_traditional
        ),
        "encrypted private key",
    ),
    "key: encrypted, in the certificate's file": (
        "ssl_certfile",
        lambda c, d: tls(ssl_certfile=c.certificate + c.key_encrypted),
        "encrypted private key",
    ),
    "key: a broken one": (
        "ssl_keyfile",
        lambda c, d: tls(ssl_certfile=c.certificate, ssl_keyfile=corrupt(c.key)),
        "cannot be loaded as a certificate and its key",
    ),
}


def write_case(
    case: Case, credentials: Credentials, folder: Path
) -> tuple[dict[str, str], list[bytes]]:
    """The QA_ variables of a case, its files written under `folder`, and their contents."""
    environ: dict[str, str] = {}
    contents: list[bytes] = []
    for name, value in case[1](credentials, folder).items():
        if isinstance(value, bytes):
            path = folder / f"{name}.pem"
            path.write_bytes(value)
            contents.append(value)
            value = str(path)
        environ[env_name(name)] = value
    return environ, contents


@pytest.mark.parametrize("case", TLS_CASES)
def test_a_tls_file_that_cannot_serve_fails_run_in_one_line(
    case: str, credentials: Credentials, tmp_path: Path
) -> None:
    setting, _, fragment = TLS_CASES[case]
    environ, contents = write_case(TLS_CASES[case], credentials, tmp_path)
    if "SASL" in environ["QA_SECURITY_PROTOCOL"]:
        environ.update(QA_SASL_USERNAME="qa", QA_SASL_PASSWORD="pw")
    result = run_worker(environ)
    assert_fails_in_one_line(result, setting, fragment, [*contents, credentials.key])


@pytest.mark.parametrize("setting", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_an_unreadable_tls_file_fails_run_in_one_line(
    setting: str, credentials: Credentials, tmp_path: Path
) -> None:
    prefix = drop_file_permission_override()
    files = {
        "ssl_cafile": credentials.ca,
        "ssl_certfile": credentials.certificate,
        "ssl_keyfile": credentials.key,
    }
    environ = {"QA_SECURITY_PROTOCOL": "SSL"}
    for name, content in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(content)
        environ[env_name(name)] = str(path)
    (tmp_path / f"{setting}.pem").chmod(0)
    result = run_worker(environ, prefix)
    assert_fails_in_one_line(result, setting, "permission denied", files.values())


@pytest.mark.parametrize(
    ("missing", "given"),
    [("sasl_password", {"QA_SASL_USERNAME": "qa"}), ("sasl_username", {"QA_SASL_PASSWORD": "pw"})],
)
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_a_sasl_protocol_without_its_login_fails_run_in_one_line(
    missing: str, given: dict[str, str], protocol: str
) -> None:
    result = run_worker(
        {"QA_SECURITY_PROTOCOL": protocol, "QA_SASL_MECHANISM": "SCRAM-SHA-256", **given}
    )
    line = assert_fails_in_one_line(result, missing, "needs", [])
    assert "SCRAM-SHA-256" in line and protocol in line


def write_manifest(folder: Path, precisions: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Manifest(
        model_type="bert",
        source="tests",
        input_names=("input_ids", "attention_mask"),
        max_length=512,
        tokenizer=TokenizerInfo("right", 2, 0, 512),
        onnx_files=precisions,
        default_precision="fp32",
        checksums={},
        versions={},
    ).write(folder)


def model_cases(folder: Path) -> dict[str, tuple[str, dict[str, str], str]]:
    """The setting, QA_ variables and a fragment of the line, for each unusable model folder,
    model cache and question-set file (written under `folder`)."""
    a_file = folder / "a-file"
    a_file.write_text(MARKER)
    no_manifest = folder / "no-manifest"
    no_manifest.mkdir()
    bad_manifest = folder / "bad-manifest"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text('{"format": 1, "' + MARKER + '": [')
    fp32_only = folder / "fp32-only"
    write_manifest(fp32_only, {"fp32": "model.onnx"})
    return {
        "model: missing": (
            "model",
            {"QA_MODEL": str(folder / "absent" / "model")},
            "does not exist",
        ),
        "model: a file": ("model", {"QA_MODEL": str(a_file)}, "is not a folder"),
        "model: no manifest": ("model", {"QA_MODEL": str(no_manifest)}, "no manifest.json"),
        "model: a manifest that does not parse": (
            "model",
            {"QA_MODEL": str(bad_manifest)},
            "is not a manifest",
        ),
        "model: no file of the precision": (
            "model",
            {"QA_MODEL": str(fp32_only), "QA_PRECISION": "int8"},
            "has no int8 model",
        ),
        "model cache: a file": (
            "model_cache",
            {"QA_MODEL": "org/name", "QA_MODEL_CACHE": str(a_file)},
            "is not a folder",
        ),
        "model cache: under a file": (
            "model_cache",
            {"QA_MODEL": "org/name", "QA_MODEL_CACHE": str(a_file / "cache")},
            "has a file above it",
        ),
        "question sets: missing": (
            "question_sets",
            {"QA_QUESTION_SETS": str(folder / "absent.yaml")},
            "does not exist",
        ),
        "question sets: a directory": (
            "question_sets",
            {"QA_QUESTION_SETS": str(folder)},
            "is a directory",
        ),
    }


MODEL_CASES = (
    "model: missing",
    "model: a file",
    "model: no manifest",
    "model: a manifest that does not parse",
    "model: no file of the precision",
    "model cache: a file",
    "model cache: under a file",
    "question sets: missing",
    "question sets: a directory",
)


def test_the_model_cases_are_all_run(tmp_path: Path) -> None:
    assert set(model_cases(tmp_path)) == set(MODEL_CASES)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_an_unusable_model_cache_or_question_set_fails_run_in_one_line(
    case: str, tmp_path: Path
) -> None:
    setting, environ, fragment = model_cases(tmp_path)[case]
    assert_fails_in_one_line(run_worker(environ), setting, fragment, [MARKER.encode()])


def test_unreadable_model_cache_and_question_sets_fail_run_in_one_line(tmp_path: Path) -> None:
    prefix = drop_file_permission_override()
    questions = tmp_path / "sets.yaml"
    questions.write_text("fields: {}\n")
    questions.chmod(0)
    result = run_worker({"QA_QUESTION_SETS": str(questions)}, prefix)
    assert_fails_in_one_line(result, "question_sets", "permission denied", [])
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    result = run_worker({"QA_MODEL": "org/name", "QA_MODEL_CACHE": str(cache)}, prefix)
    assert_fails_in_one_line(result, "model_cache", "cannot be written", [])


def test_working_tls_files_pass_and_build_the_context(
    credentials: Credentials, tmp_path: Path
) -> None:
    # What must not be refused: a bundle of several CAs, CRLF line ends, a traditional EC key,
    # and the key in the certificate's own file.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(make_credentials().ca + credentials.ca.replace(b"\n", b"\r\n"))
    key = tmp_path / "key.pem"
    key.write_bytes(credentials.key_traditional)
    certificate = tmp_path / "certificate.pem"
    certificate.write_bytes(credentials.certificate)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(credentials.certificate + credentials.key)
    for files in ({"ssl_certfile": certificate, "ssl_keyfile": key}, {"ssl_certfile": combined}):
        settings_ = Settings(security_protocol="SSL", ssl_cafile=bundle, **files)
        check_settings(settings_, ("kafka",))
        context = client_ssl_context(settings_)
        assert context is not None and context.cert_store_stats()["x509_ca"] == 2
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_hub_id_with_a_cache_still_to_create_passes(tmp_path: Path) -> None:
    settings_ = Settings(model=Path("org/name"), model_cache=tmp_path / "not" / "yet")
    check_settings(settings_, ("model",))
    write_manifest(tmp_path / "model", {"fp32": "model.onnx", "int8": "model.int8.onnx"})
    check_settings(Settings(model=tmp_path / "model", precision="int8"), ("model",))


TLS_SETTINGS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    setting=st.sampled_from(TLS_SETTINGS),
    source=st.sampled_from(["ca", "certificate", "key", "key_encrypted", "other_key"]),
    cut=st.integers(min_value=0, max_value=2000),
    noise=st.binary(max_size=40),
)
def test_any_damage_to_a_tls_file_is_refused_in_one_line_or_loads(
    setting: str, source: str, cut: int, noise: bytes, credentials: Credentials, tmp_path: Path
) -> None:
    good = {
        "ssl_cafile": credentials.ca,
        "ssl_certfile": credentials.certificate,
        "ssl_keyfile": credentials.key,
    }
    original = getattr(credentials, source)
    damaged = original[:cut] + noise + MARKER.encode() + original[cut + len(noise) :]
    paths = {}
    for name in TLS_SETTINGS:
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(damaged if name == setting else good[name])
    try:
        client_ssl_context(Settings(security_protocol="SSL", **paths))
    except ConfigError as error:
        message = str(error)
        assert escape(message) == message
        assert any(describe(name) in message for name in TLS_SETTINGS), message
        assert MARKER not in message
        for piece in content_lines(damaged):
            assert piece.decode(errors="replace") not in message
