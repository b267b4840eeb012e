"""The gateway's configuration: one typed, frozen object built once at start-up.

Sources, later ones winning:

1. defaults (every key has one except `upstream.url` and `[[auth.issuers]]`);
2. a TOML file (`--config PATH` or `CHATKIT_GATEWAY_CONFIG`);
3. environment overrides `CHATKIT_GATEWAY__SECTION__KEY=value`, the value read as TOML would read
   it (`false`, `30`, `["https://app.example.com"]`) and otherwise taken as a plain string;
4. for secrets, `CHATKIT_GATEWAY__SECTION__KEY_FILE=/path` naming a file that holds the value.

Unknown keys and bad values raise `ConfigError` with a message naming the key
(`upstream.url: must be an http(s) URL`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ENV_PREFIX",
    "SECRET_KEYS",
    "AuthConfig",
    "ConfigError",
    "CorsConfig",
    "GatewayConfig",
    "IdentityConfig",
    "IssuerConfig",
    "JWKSConfig",
    "LoggingConfig",
    "MetadataConfig",
    "OwnershipConfig",
    "RateLimitConfig",
    "RevocationConfig",
    "SecurityConfig",
    "ServerConfig",
    "TracingConfig",
    "TokenResourceConfig",
    "TokensConfig",
    "UpstreamConfig",
    "load_config",
    "per_process_stores",
    "redacted",
]

ENV_PREFIX = "CHATKIT_GATEWAY__"
CONFIG_PATH_ENV = "CHATKIT_GATEWAY_CONFIG"
SECRET_KEYS = frozenset(
    {
        ("upstream", "identity_secret"),
        ("ratelimit", "redis_url"),
        ("revocation", "redis_url"),
        ("ownership", "redis_url"),
    }
)
MIB = 1024 * 1024

Seconds = Annotated[float, Strict(), Field(ge=0)]
PositiveSeconds = Annotated[float, Strict(), Field(gt=0)]
Bytes = Annotated[int, Strict(), Field(gt=0)]
Count = Annotated[int, Strict(), Field(ge=0)]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key at fault."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


def _check_http_url(value: str, *, trailing_slash: bool = False) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    if trailing_slash and not parts.path.endswith("/"):
        raise ValueError("must end with '/'")
    return value


def _check_origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ValueError(f"{value!r} is not an origin like 'https://app.example.com'")
    return value.rstrip("/").lower()


DEFAULT_PORTS = {"http": 80, "https": 443}


def _reachable_under(url: str, base: str) -> bool:
    """Whether `url` is `base` followed by some path: same scheme, host and port as written (no name
    resolution; an omitted port is the scheme's default), and `url`'s path starts with `base`'s."""
    target, prefix = urlsplit(url), urlsplit(base)  # both lower-case the scheme and the host
    if (target.scheme, target.hostname) != (prefix.scheme, prefix.hostname):
        return False
    if (target.port or DEFAULT_PORTS[target.scheme]) != (prefix.port or DEFAULT_PORTS[prefix.scheme]):
        return False
    return unquote(target.path or "/").startswith(unquote(prefix.path))


class ServerConfig(_Section):
    host: Text = "127.0.0.1"
    port: Annotated[int, Strict(), Field(ge=0, le=65535)] = 8080
    chatkit_path: Text = "/chatkit"
    uploads_path: Text = "/chatkit/uploads/"
    max_body_bytes: Bytes = 25 * MIB
    max_upload_bytes: Bytes = 100 * MIB
    shutdown_grace_seconds: Seconds = 30.0
    trusted_proxies: tuple[Text, ...] = ()
    max_header_bytes: Bytes = 32 * 1024
    body_timeout_seconds: PositiveSeconds = 30.0
    # Worker processes on one socket (gateway/workers.py); each serves one core.
    workers: Annotated[int, Strict(), Field(ge=1, le=256)] = 1

    @field_validator("chatkit_path")
    @classmethod
    def _chatkit_path(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError("must start with '/' and not end with '/'")
        return value

    @field_validator("uploads_path")
    @classmethod
    def _uploads_path(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/") or "//" in value:
            raise ValueError("must start and end with '/'")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value


class UpstreamConfig(_Section):
    url: Text
    uploads_url: Text | None = None
    connect_timeout: PositiveSeconds = 5.0
    response_timeout: PositiveSeconds = 60.0
    heartbeat_seconds: Seconds = 0.0
    stream_idle_timeout: Seconds = 600.0
    forward_access_token: Flag = False
    identity_secret: Text | None = None
    # JSON ops to the backend at once (each holds one connection; more wait their turn within the
    # response deadline); streams and uploads are counted apart, up to `max_streams`.
    max_connections: Annotated[int, Strict(), Field(ge=1, le=256)] = 8
    max_streams: Annotated[int, Strict(), Field(ge=1)] = 10_000
    stream_keepalive: Annotated[int, Strict(), Field(ge=0, le=256)] = 16
    # Below the backend's own keep-alive timeout, so the gateway lets an idle connection go before the
    # backend closes it under a request (the keep-alive race): gunicorn's default is 2 s, uvicorn's
    # and hypercorn's 5 s, Node's 5 s, nginx's 75 s (docs/deployment.md, "The upstream connection").
    keepalive_expiry: PositiveSeconds = 1.5
    # A final response head (status line and header lines) larger than this is a 502; browsers
    # refuse heads of a few hundred KiB, and one unbounded head would be held whole in memory.
    max_header_bytes: Bytes = 65536
    # TLS to an https backend: a CA bundle (PEM) instead of the system's, a client certificate and
    # key for mutual TLS, and the name for SNI and the certificate check when it is not the URL's host.
    ca_file: Text | None = None
    client_cert_file: Text | None = None
    client_key_file: Text | None = None
    server_name: Text | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("uploads_url")
    @classmethod
    def _uploads_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        _check_http_url(value, trailing_slash=True)
        url = info.data.get("url")  # absent when `url` itself was refused
        if isinstance(url, str) and _reachable_under(url, value):
            # `{uploads_path}REST` would then deliver a raw client body to the ChatKit endpoint, past
            # the metadata rewrite and every JSON check (docs/security.md, "The uploads URL").
            raise ValueError(
                "upstream.url can be reached under it (same origin, and upstream.url's path starts with "
                "this path); give uploads a path of their own, e.g. '/uploads/'"
            )
        return value

    @field_validator("identity_secret")
    @classmethod
    def _identity_secret(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < 32:
            raise ValueError("must be at least 32 bytes (use a random secret)")
        return value

    @model_validator(mode="after")
    def _tls(self) -> UpstreamConfig:
        if self.client_key_file is not None and self.client_cert_file is None:
            raise ValueError("client_key_file needs client_cert_file")
        tls_keys = ("ca_file", "client_cert_file", "client_key_file", "server_name")
        if any(getattr(self, key) is not None for key in tls_keys) and not self.uses_tls:
            raise ValueError("TLS settings need an https url or uploads_url")
        return self

    @property
    def uses_tls(self) -> bool:
        return any(urlsplit(url).scheme == "https" for url in (self.url, self.uploads_url or ""))


class JWKSConfig(_Section):
    min_ttl_seconds: Seconds = 60.0
    max_ttl_seconds: Seconds = 86400.0
    default_ttl_seconds: Seconds = 300.0
    refresh_cooldown_seconds: Seconds = 30.0
    max_stale_seconds: Seconds = 86400.0
    fetch_timeout_seconds: PositiveSeconds = 5.0
    max_bytes: Bytes = MIB

    @model_validator(mode="after")
    def _ttl_bounds(self) -> JWKSConfig:
        if self.min_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("min_ttl_seconds must not exceed max_ttl_seconds")
        return self


# What python-jose 3.5.0 can verify: it has no RSASSA-PSS (PS256/384/512), so those are refused here
# at start-up rather than failing every token at run time (docs/jwt-attacks.md, "python-jose 3.5.0").
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class IssuerConfig(_Section):
    issuer: Text
    jwks_url: Text | None = None
    audiences: tuple[Text, ...] = Field(min_length=1)
    algorithms: tuple[Text, ...] = ("RS256",)
    leeway_seconds: Seconds = 30.0
    required_claims: tuple[Text, ...] = ("exp", "iat", "sub")
    # Written before the user id claim, so the same `sub` from two issuers names two users.
    user_id_prefix: Text = ""
    # The `aud` of this issuer's OIDC back-channel logout tokens (the client id the IdP knows the
    # gateway by); without it, no logout token of this issuer is accepted.
    backchannel_audience: Text | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one algorithm")
        for alg in value:
            # RFC 8725 3.1: `none` and HMAC are never acceptable for tokens verified with public keys.
            if alg not in ALLOWED_ALGORITHMS:
                raise ValueError(f"{alg!r} is not allowed; choose from {', '.join(ALLOWED_ALGORITHMS)}")
        return value


def _check_distinct_prefixes(issuers: tuple[IssuerConfig, ...]) -> None:
    # Two issuers may each have a user whose `sub` is "alice"; a backend keyed by user id would
    # hand one the other's threads. Distinct prefixes keep their ids apart.
    first: dict[str, int] = {}
    for index, item in enumerate(issuers):
        if item.user_id_prefix in first:
            other = first[item.user_id_prefix]
            raise ValueError(
                f"entries {other} ({issuers[other].issuer}) and {index} ({item.issuer}) have the same "
                f"user_id_prefix {item.user_id_prefix!r}; with several issuers each needs its own"
            )
        first[item.user_id_prefix] = index


class AuthConfig(_Section):
    bearer: Flag = True
    cookie_names: tuple[Text, ...] = ("auth_token",)
    max_token_bytes: Bytes = 8192
    stream_errors: Flag = False
    jwks: JWKSConfig = JWKSConfig()
    issuers: tuple[IssuerConfig, ...] = Field(min_length=1)
    token_cache_size: Annotated[int, Strict(), Field(ge=0)] = 10_000
    token_cache_seconds: Seconds = 300.0
    # A stream ends this long after its token's `exp`; -1: never.
    stream_grace_seconds: Annotated[float, Strict(), Field(ge=-1)] = 300.0

    @field_validator("stream_grace_seconds")
    @classmethod
    def _stream_grace(cls, value: float) -> float:
        if value < 0 and value != -1:
            raise ValueError("must be -1 (never) or at least 0")
        return value

    @field_validator("issuers")
    @classmethod
    def _unique_issuers(cls, value: tuple[IssuerConfig, ...]) -> tuple[IssuerConfig, ...]:
        names = [item.issuer for item in value]
        if len(names) != len(set(names)):
            raise ValueError("each issuer may appear once")
        if len(value) > 1:
            _check_distinct_prefixes(value)
        return value


class SecurityConfig(_Section):
    allowed_origins: tuple[Text, ...] = ()

    @field_validator("allowed_origins")
    @classmethod
    def _allowed_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_origin(v) for v in value)


class CorsConfig(_Section):
    allow_origins: tuple[Text, ...] = ()
    max_age_seconds: Annotated[int, Strict(), Field(ge=0)] = 600

    @field_validator("allow_origins")
    @classmethod
    def _allow_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in value:
            raise ValueError("'*' cannot be used with credentials; list explicit origins")
        return tuple(_check_origin(v) for v in value)


class IdentityConfig(_Section):
    user_id_claim: Text = "sub"
    name_claim: Text = "name"
    email_claim: Text = "email"
    extra_claims: tuple[Text, ...] = ()


class MetadataConfig(_Section):
    page_context_header: Text = "X-ChatKit-Page-Context"
    page_context_max_bytes: Bytes = 4096
    page_context_value_max_chars: Bytes = 1024
    page_context_keys: tuple[Text, ...] = ()


class RateLimitConfig(_Section):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: Text | None = None
    requests_per_minute: Count = 0
    messages_per_minute: Count = 0
    max_concurrent_streams: Count = 0
    on_backend_error: Literal["allow", "deny"] = "allow"

    @model_validator(mode="after")
    def _redis_needs_url(self) -> RateLimitConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when backend = 'redis'")
        return self


class RevocationConfig(_Section):
    enabled: Flag = False
    store: Literal["memory", "redis"] = "memory"
    redis_url: Text | None = None
    # A file holding the admin API's bearer secret; the admin API is off without it.
    admin_token_file: Text | None = None

    @model_validator(mode="after")
    def _redis_needs_url(self) -> RevocationConfig:
        if self.store == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when store = 'redis'")
        return self


RESOURCE_NAME = re.compile(r"[a-z0-9-]+")
MAX_TOOL_TOKEN_SECONDS = 3600


class TokenResourceConfig(_Section):
    """`[[tokens.resources]]`: one tool server and the token the gateway gets for it."""

    name: Text
    audience: Text
    scopes: tuple[Text, ...] = ()
    lifetime_seconds: Annotated[int, Strict(), Field(ge=1, le=MAX_TOOL_TOKEN_SECONDS)] = 300
    mode: Literal["mint", "exchange"] = "mint"
    token_endpoint: Text | None = None
    client_id: Text | None = None
    client_secret_file: Text | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # It becomes a header name (X-ChatKit-Token-{name}): RFC 9110 token characters, lower case.
        if not RESOURCE_NAME.fullmatch(value):
            raise ValueError("must be lower-case letters, digits and '-'")
        return value

    @field_validator("token_endpoint")
    @classmethod
    def _token_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @model_validator(mode="after")
    def _exchange_needs_client(self) -> TokenResourceConfig:
        if self.mode == "exchange":
            missing = [k for k in ("token_endpoint", "client_id", "client_secret_file") if not getattr(self, k)]
            if missing:
                raise ValueError(f"mode = 'exchange' needs {', '.join(missing)}")
        return self


class TokensConfig(_Section):
    """`[tokens]`: the gateway's own signing key, its identity assertion and tool tokens."""

    issuer: Text | None = None
    signing_key_file: Text | None = None
    previous_key_files: tuple[Text, ...] = ()
    assertion_audience: Text | None = None
    resources: tuple[TokenResourceConfig, ...] = ()
    # Tool tokens kept for reuse: this many minted ones (one per user and resource), and this many
    # per exchanged resource (one per user token); the least recently used go first beyond it.
    cache_size: Annotated[int, Strict(), Field(ge=1)] = 10_000

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @model_validator(mode="after")
    def _consistent(self) -> TokensConfig:
        names = [resource.name for resource in self.resources]
        if len(names) != len(set(names)):
            raise ValueError("each resource name may appear once")
        if self.signing_key_file is None:
            # Without a key nothing here is active: a setting that would silently do nothing stops start-up.
            if self.assertion_audience is not None or self.resources or self.previous_key_files:
                raise ValueError(
                    "signing_key_file is required for assertion_audience, resources and previous_key_files"
                )
        elif self.issuer is None:
            raise ValueError("issuer is required when signing_key_file is set")
        return self


class OwnershipConfig(_Section):
    enabled: Flag = True
    store: Literal["sqlite", "redis", "memory"] = "sqlite"
    sqlite_path: Text = "chatkit-gateway-ownership.sqlite3"
    redis_url: Text | None = None
    unknown: Literal["claim", "deny"] = "claim"
    # Owners never change, so (id -> owner) pairs are cached in process; this bounds how many.
    cache_size: Annotated[int, Strict(), Field(ge=0)] = 100_000

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # Checked here, not when the first request reaches Redis: a wrong URL stops start-up.
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_needs_url(self) -> OwnershipConfig:
        if self.enabled and self.store == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when store = 'redis'")
        return self


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class TracingConfig(_Section):
    enabled: Flag = False
    # The collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: spans go to `{otlp_endpoint}/v1/traces`.
    otlp_endpoint: Text | None = None
    service_name: Text = "chatkit-gateway"
    sample_ratio: Annotated[float, Strict(), Field(ge=0, le=1)] = 1.0
    include_user_id: Flag = False

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> TracingConfig:
        if self.enabled and self.otlp_endpoint is None:
            raise ValueError("otlp_endpoint is required when enabled = true")
        return self


class GatewayConfig(_Section):
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig
    auth: AuthConfig
    security: SecurityConfig = SecurityConfig()
    cors: CorsConfig = CorsConfig()
    identity: IdentityConfig = IdentityConfig()
    metadata: MetadataConfig = MetadataConfig()
    ratelimit: RateLimitConfig = RateLimitConfig()
    ownership: OwnershipConfig = OwnershipConfig()
    revocation: RevocationConfig = RevocationConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    tokens: TokensConfig = TokensConfig()

    @model_validator(mode="after")
    def _uploads_path_distinct(self) -> GatewayConfig:
        if self.server.uploads_path.rstrip("/") == self.server.chatkit_path:
            raise ValueError("server.uploads_path must differ from server.chatkit_path")
        return self

    @model_validator(mode="after")
    def _workers_share_state(self) -> GatewayConfig:
        stores = per_process_stores(self)
        if self.server.workers > 1 and stores:
            raise ValueError(
                f"server.workers = {self.server.workers}: each worker would keep its own "
                + "; ".join(stores)
                + ". Use a shared store, or server.workers = 1"
            )
        return self


def per_process_stores(config: GatewayConfig) -> list[str]:
    """The state kept in one process's memory where workers must share it: with several workers each
    would hold a part (a user's budget counted per worker, a record another worker never sees).
    Each entry names the key to change."""
    found = []
    limits = config.ratelimit
    if limits.backend == "memory" and (
        limits.requests_per_minute or limits.messages_per_minute or limits.max_concurrent_streams
    ):
        found.append('rate-limit budget (ratelimit.backend = "memory"; set it to "redis" with ratelimit.redis_url)')
    if config.ownership.enabled and config.ownership.store == "memory":
        # An owner recorded by one worker would be unknown to the others: another user could claim it.
        found.append('thread owners (ownership.store = "memory"; use "sqlite", shared by the workers, or "redis")')
    if config.revocation.enabled and config.revocation.store == "memory":
        # A revocation posted to one worker would leave the others serving the revoked token.
        found.append('revocations (revocation.store = "memory"; set it to "redis" with revocation.redis_url)')
    return found


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: malformed override name")
        value: Any
        if path[-1].endswith("_file") and tuple([*path[:-1], path[-1][: -len("_file")]]) in SECRET_KEYS:
            path[-1] = path[-1][: -len("_file")]
            try:
                value = Path(raw).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{'.'.join(path)}: cannot read {raw}: {exc.strerror}") from None
        else:
            value = _parse_env_value(raw)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: i + 1])}: cannot override inside a non-table value")
            node = child
        node[path[-1]] = value


def _format_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "config"
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {message}")
    return "\n".join(lines)


def build_config(data: Mapping[str, Any]) -> GatewayConfig:
    """Validate an already merged mapping (file plus overrides)."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read the TOML file (if any), apply environment overrides and validate."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_PATH_ENV) or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    _apply_env(data, environ)
    return build_config(data)


def redacted(config: GatewayConfig) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by a marker."""
    data = config.model_dump(mode="json")
    for section, key in SECRET_KEYS:
        if data.get(section, {}).get(key) is not None:
            data[section][key] = "<redacted>"
    return data
