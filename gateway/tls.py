"""TLS to the backend: the one `ssl.SSLContext` every upstream connection uses, made at start-up.

Made once because making one is not free: it loads the CA bundle on the event loop, and made per
connection it stalled every open stream during a burst of new ones (docs/BENCHMARKS.md,
"Measured design choices"). Verification stays on
(hostname and chain, `ssl.create_default_context`); only where trust comes from can change.
"""

from __future__ import annotations

import ssl

from .config import ConfigError, UpstreamConfig

__all__ = ["upstream_ssl_context"]


def upstream_ssl_context(config: UpstreamConfig) -> ssl.SSLContext | None:
    """The context for an https backend (None for plain http): `ca_file` as the trusted roots
    (default: the system's), `client_cert_file`/`client_key_file` as the client's certificate."""
    if not config.uses_tls:
        return None
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"upstream.ca_file: cannot load {config.ca_file}: {_reason(exc)}") from None
    if config.client_cert_file is not None:
        try:
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
        except (OSError, ssl.SSLError) as exc:
            # The message names the files, never their content (the key is a secret).
            raise ConfigError(
                f"upstream.client_cert_file: cannot load the certificate or its key: {_reason(exc)}"
            ) from None
    return context


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)
