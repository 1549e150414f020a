"""The Kafka clients' TLS context and SASL login, built from the settings and checked whole.

Every problem with them is a `ConfigError` of one line that names the setting and says what is
wrong with what it names: a file missing, unreadable, a directory, not PEM, a private key where
certificates are expected or the other way round, a key that does not match its certificate, an
encrypted key (the worker takes no key password); a SASL protocol without its user name or
password. A message never quotes a file's content (a key file may hold a key after all), only
its path and the TLS library's reason code.

`qa-worker` builds them before a command starts (`worker.preflight`), so a bad file fails before
anything is imported or connected; the clients build them again from the same settings. This
module imports neither faust nor aiokafka, for that reason.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from pathlib import Path

from .config import Settings, describe
from .errors import ConfigError

__all__ = ["client_ssl_context", "read_setting_file", "sasl_login", "shown_path"]

# A PEM block's first line; the label says what the block holds (RFC 7468).
_PEM_LABEL = re.compile(rb"^-----BEGIN ([A-Z0-9 ]+)-----[ \t\r]*$", re.MULTILINE)
_CERTIFICATE_LABELS = {b"CERTIFICATE", b"TRUSTED CERTIFICATE", b"X509 CERTIFICATE"}
# The traditional (PKCS#1, SEC 1) encrypted key: its label is a plain key's, its header says.
_ENCRYPTED_HEADER = re.compile(rb"^Proc-Type:[ \t]*4,ENCRYPTED", re.MULTILINE)


def shown_path(path: Path) -> str:
    """`path` quoted as in a message: on one line whatever it holds (repr escapes breaks)."""
    return repr(str(path))


def read_setting_file(name: str, path: Path) -> bytes:
    """The content of the regular file setting `name` names, or a ConfigError saying why not."""
    where = f"{describe(name)}: {shown_path(path)}"
    try:
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            raise ConfigError(f"{where} is a directory, not a file")
        if not stat.S_ISREG(status.st_mode):
            # A pipe or a device could block the start-up or never end.
            raise ConfigError(f"{where} is not a regular file")
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{where} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{where} cannot be read: permission denied") from None
    except OSError as error:
        raise ConfigError(
            f"{where} cannot be read: {error.strerror or type(error).__name__}"
        ) from None


def _labels(content: bytes) -> list[bytes]:
    return _PEM_LABEL.findall(content)


def _is_key(label: bytes) -> bool:
    return label.endswith(b"PRIVATE KEY")


def _require_certificates(name: str, path: Path, content: bytes, wanted: str) -> None:
    labels = _labels(content)
    if any(label in _CERTIFICATE_LABELS for label in labels):
        return
    where = f"{describe(name)}: {shown_path(path)}"
    if any(_is_key(label) for label in labels):
        raise ConfigError(f"{where} holds a private key, not {wanted}")
    if labels:
        raise ConfigError(f"{where} holds no certificate, where {wanted} was expected")
    raise ConfigError(
        f"{where} is not PEM (no '-----BEGIN CERTIFICATE-----' line); a DER file converts with "
        "`openssl x509 -inform der -in FILE -out FILE.pem`"
    )


def _require_unencrypted_key(name: str, path: Path, content: bytes) -> None:
    labels = _labels(content)
    where = f"{describe(name)}: {shown_path(path)}"
    if not any(_is_key(label) for label in labels):
        if any(label in _CERTIFICATE_LABELS for label in labels):
            raise ConfigError(f"{where} holds a certificate, not a private key")
        if labels:
            raise ConfigError(f"{where} holds no private key")
        raise ConfigError(f"{where} is not PEM (no '-----BEGIN PRIVATE KEY-----' line)")
    if b"ENCRYPTED PRIVATE KEY" in labels or _ENCRYPTED_HEADER.search(content):
        raise _encrypted_key(name, path)


def _encrypted_key(name: str, path: Path) -> ConfigError:
    return ConfigError(
        f"{describe(name)}: {shown_path(path)} holds an encrypted private key and the worker "
        "takes no key password; give it the key decrypted (`openssl pkey -in KEY -out "
        "DECRYPTED`), from a file only the worker can read"
    )


def _failure(error: OSError) -> str:
    # The TLS library's reason code (KEY_VALUES_MISMATCH, BAD_BASE64_DECODE, ...) or the system's
    # error: never the file's bytes, as a parser quoting the line it choked on would.
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return error.strerror or type(error).__name__


def client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of a client with these settings (None without TLS), every file checked.

    Raises ConfigError (one line, naming the setting) for anything that would keep it from
    working; see the module.
    """
    if "SSL" not in settings.security_protocol:
        return None
    cafile, certfile, keyfile = settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile
    if cafile is not None:
        _require_certificates(
            "ssl_cafile", cafile, read_setting_file("ssl_cafile", cafile), "CA certificates"
        )
    if certfile is not None:
        certificate = read_setting_file("ssl_certfile", certfile)
        _require_certificates("ssl_certfile", certfile, certificate, "a certificate")
        if keyfile is not None:
            _require_unencrypted_key(
                "ssl_keyfile", keyfile, read_setting_file("ssl_keyfile", keyfile)
            )
        elif not any(_is_key(label) for label in _labels(certificate)):
            raise ConfigError(
                f"{describe('ssl_certfile')}: {shown_path(certfile)} holds no private key and "
                f"{describe('ssl_keyfile')} is not set"
            )
        else:
            _require_unencrypted_key("ssl_certfile", certfile, certificate)
    try:
        context = ssl.create_default_context(
            purpose=ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None
        )
    except (ssl.SSLError, OSError) as error:
        if cafile is None:  # the system's CA bundle, which no setting names
            raise
        raise ConfigError(
            f"{describe('ssl_cafile')}: {shown_path(cafile)} cannot be loaded as CA "
            f"certificates ({_failure(error)})"
        ) from None
    if certfile is not None:
        _load_client_certificate(context, certfile, keyfile)
    return context


def _load_client_certificate(context: ssl.SSLContext, certfile: Path, keyfile: Path | None) -> None:
    key_setting = "ssl_keyfile" if keyfile is not None else "ssl_certfile"

    def refuse_password() -> str:
        # Only reached for an encrypted key the labels did not give away; without a callback
        # OpenSSL would ask for the password on the terminal and wait.
        raise _encrypted_key(key_setting, keyfile or certfile)

    failure: OSError
    try:
        context.load_cert_chain(
            str(certfile), str(keyfile) if keyfile else None, password=refuse_password
        )
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{describe(key_setting)}: the private key in {shown_path(keyfile or certfile)} "
                f"does not match the certificate in {shown_path(certfile)} "
                f"({describe('ssl_certfile')})"
            ) from None
        failure = error
    except OSError as error:  # the file changed since it was checked
        failure = error
    else:
        return
    with_key = (
        ""
        if keyfile is None
        else f" with the key in {shown_path(keyfile)} ({describe('ssl_keyfile')})"
    )
    raise ConfigError(
        f"{describe('ssl_certfile')}: {shown_path(certfile)}{with_key} cannot be loaded as a "
        f"certificate and its key ({_failure(failure)})"
    )


def sasl_login(settings: Settings) -> tuple[str, str]:
    """The SASL user name and password; a ConfigError naming what a SASL protocol lacks."""
    if settings.sasl_username is None or settings.sasl_password is None:
        missing = [
            describe(name)
            for name in ("sasl_username", "sasl_password")
            if getattr(settings, name) is None
        ]
        raise ConfigError(
            f"{describe('security_protocol')} {settings.security_protocol} with "
            f"{describe('sasl_mechanism')} {settings.sasl_mechanism} needs "
            f"{' and '.join(missing)}"
        )
    return settings.sasl_username, settings.sasl_password
