"""Configuration: the example documents every key with its default; overrides and errors name keys."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import ConfigError, GatewayConfig, load_config, redacted

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"
MINIMAL = {
    "CHATKIT_GATEWAY__UPSTREAM__URL": "http://127.0.0.1:8001/chatkit",
    "CHATKIT_GATEWAY__AUTH__ISSUERS": '[{issuer = "https://idp.example.com", audiences = ["chatkit"]}]',
}


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            keys |= model_keys(nested[0], f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def documented_keys(text: str) -> set[str]:
    """Every `key = value` line of the example, commented out or not, with its table path (a table
    may be commented out too, as `# [[tokens.resources]]` is)."""
    keys, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^\s*#?\s*\[\[?([a-z_.]+)\]\]?", line)
        if header:
            table = header.group(1) + "."
            continue
        key = re.match(r"^\s*#?\s*([a-z_]+)\s*=", line)
        if key:
            keys.add(table + key.group(1))
    return keys


def test_the_example_config_loads() -> None:
    config = load_config(EXAMPLE, environ={})
    assert config.upstream.url == "http://127.0.0.1:8001/chatkit"


def test_the_example_documents_every_key() -> None:
    assert model_keys(GatewayConfig) == documented_keys(EXAMPLE.read_text())


def test_the_example_shows_every_default() -> None:
    example = tomllib.loads(EXAMPLE.read_text())
    defaults = load_config(environ=MINIMAL).model_dump()

    def compare(section: dict[str, Any], shown: dict[str, Any], path: str) -> None:
        for key, value in shown.items():
            if key == "issuers":
                continue
            if isinstance(value, dict):
                compare(section[key], value, f"{path}{key}.")
            elif path + key != "upstream.url":
                expected = list(section[key]) if isinstance(section[key], tuple) else section[key]
                assert value == expected, f"{path}{key}: example shows {value!r}, default is {expected!r}"

    compare(defaults, example, "")
    issuer = example["auth"]["issuers"][0]
    issuer_defaults = load_config(EXAMPLE, environ={}).auth.issuers[0]
    for key in ("algorithms", "leeway_seconds", "required_claims", "user_id_prefix"):
        shown = issuer[key]
        assert shown == (
            list(getattr(issuer_defaults, key)) if isinstance(shown, list) else getattr(issuer_defaults, key)
        )


def test_environment_overrides_win_over_the_file() -> None:
    config = load_config(
        EXAMPLE,
        environ={
            "CHATKIT_GATEWAY__UPSTREAM__URL": "http://backend:9000/ck",
            "CHATKIT_GATEWAY__AUTH__BEARER": "false",
            "CHATKIT_GATEWAY__SERVER__PORT": "9999",
            "CHATKIT_GATEWAY__AUTH__JWKS__MAX_BYTES": "2048",
            "CHATKIT_GATEWAY__SECURITY__ALLOWED_ORIGINS": '["https://App.example.com"]',
            "OTHER_VARIABLE": "ignored",
        },
    )
    assert config.upstream.url == "http://backend:9000/ck"
    assert config.auth.bearer is False
    assert config.server.port == 9999
    assert config.auth.jwks.max_bytes == 2048
    assert config.security.allowed_origins == ("https://app.example.com",)


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    secret = tmp_path / "identity"
    secret.write_text("s" * 40 + "\n")
    config = load_config(environ={**MINIMAL, "CHATKIT_GATEWAY__UPSTREAM__IDENTITY_SECRET_FILE": str(secret)})
    assert config.upstream.identity_secret == "s" * 40


def test_the_ownership_redis_url_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "redis-url"
    secret.write_text("redis://:pw@127.0.0.1:6379/1\n")
    environ = {**MINIMAL, "CHATKIT_GATEWAY__OWNERSHIP__STORE": "redis"}
    config = load_config(environ={**environ, "CHATKIT_GATEWAY__OWNERSHIP__REDIS_URL_FILE": str(secret)})
    assert config.ownership.redis_url == "redis://:pw@127.0.0.1:6379/1"


def test_only_secret_keys_take_a_file() -> None:
    with pytest.raises(ConfigError, match=r"upstream\.url_file: unknown key"):
        load_config(environ={**MINIMAL, "CHATKIT_GATEWAY__UPSTREAM__URL_FILE": "/etc/hostname"})


BAD_VALUES = [
    pytest.param({"CHATKIT_GATEWAY__UPSTREAM__URL": "ftp://x"}, r"upstream\.url: must be an http\(s\) URL", id="url"),
    pytest.param({"CHATKIT_GATEWAY__SERVER__PORT": "70000"}, r"server\.port:", id="port-range"),
    pytest.param({"CHATKIT_GATEWAY__SERVER__PORT": '"8080"'}, r"server\.port:", id="port-string"),
    pytest.param({"CHATKIT_GATEWAY__AUTH__BEARER": "yes"}, r"auth\.bearer:", id="bool"),
    pytest.param({"CHATKIT_GATEWAY__SERVER__MAX_BODY_BYTES": "0"}, r"server\.max_body_bytes:", id="size"),
    pytest.param({"CHATKIT_GATEWAY__UPSTREAM__RESPONSE_TIMEOUT": "-1"}, r"upstream\.response_timeout:", id="duration"),
    pytest.param({"CHATKIT_GATEWAY__LOGGING__FORMAT": "xml"}, r"logging\.format:", id="literal"),
    pytest.param({"CHATKIT_GATEWAY__SERVER__SURPRISE": "1"}, r"server\.surprise: unknown key", id="unknown-key"),
    pytest.param({"CHATKIT_GATEWAY__NOPE__X": "1"}, r"nope: unknown key", id="unknown-section"),
    pytest.param({"CHATKIT_GATEWAY__CORS__ALLOW_ORIGINS": '["*"]'}, r"cors\.allow_origins:", id="cors-star"),
    pytest.param(
        {"CHATKIT_GATEWAY__SECURITY__ALLOWED_ORIGINS": '["https://a.example/path"]'},
        r"security\.allowed_origins:",
        id="origin",
    ),
    pytest.param(
        {"CHATKIT_GATEWAY__UPSTREAM__IDENTITY_SECRET": "short"}, r"upstream\.identity_secret:", id="short-secret"
    ),
    pytest.param(
        {"CHATKIT_GATEWAY__UPSTREAM__UPLOADS_URL": "http://b/up"},
        r"upstream\.uploads_url: must end with '/'",
        id="uploads-slash",
    ),
    pytest.param(
        {"CHATKIT_GATEWAY__SERVER__TRUSTED_PROXIES": '["not-an-ip"]'}, r"server\.trusted_proxies:", id="proxies"
    ),
    pytest.param({"CHATKIT_GATEWAY__RATELIMIT__BACKEND": "redis"}, r"ratelimit: .*redis_url", id="redis-url"),
    pytest.param({"CHATKIT_GATEWAY__OWNERSHIP__STORE": "redis"}, r"ownership: .*redis_url", id="ownership-redis"),
    pytest.param({"CHATKIT_GATEWAY__OWNERSHIP__UNKNOWN": "allow"}, r"ownership\.unknown:", id="ownership-unknown"),
    pytest.param(
        {"CHATKIT_GATEWAY__OWNERSHIP__REDIS_URL": "http://r:6379"}, r"ownership\.redis_url:", id="ownership-url"
    ),
    pytest.param(
        {
            "CHATKIT_GATEWAY__AUTH__ISSUERS": '[{issuer = "https://i.example", audiences = ["a"], '
            'algorithms = ["HS256"]}]'
        },
        r"auth\.issuers\.0\.algorithms: 'HS256' is not allowed",
        id="hmac",
    ),
    pytest.param(
        {
            "CHATKIT_GATEWAY__AUTH__ISSUERS": '[{issuer = "https://i.example", audiences = ["a"], '
            'algorithms = ["none"]}]'
        },
        r"auth\.issuers\.0\.algorithms: 'none' is not allowed",
        id="none",
    ),
    pytest.param(
        {"CHATKIT_GATEWAY__AUTH__ISSUERS": '[{issuer = "https://i.example"}]'},
        r"auth\.issuers\.0\.audiences: required",
        id="audiences",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES)
def test_a_bad_value_names_its_key(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ={**MINIMAL, **overrides})


def test_missing_required_keys_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={})
    assert "upstream: required key is missing" in str(caught.value)
    assert "auth: required key is missing" in str(caught.value)


def test_config_is_frozen() -> None:
    config = load_config(environ=MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        config.server.port = 1  # type: ignore[misc]


def test_redacted_hides_secrets() -> None:
    config = load_config(
        environ={
            **MINIMAL,
            "CHATKIT_GATEWAY__UPSTREAM__IDENTITY_SECRET": "x" * 40,
            "CHATKIT_GATEWAY__RATELIMIT__REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
            "CHATKIT_GATEWAY__OWNERSHIP__REDIS_URL": "redis://:pw@127.0.0.1:6379/1",
        }
    )
    shown = redacted(config)
    assert shown["upstream"]["identity_secret"] == "<redacted>"
    assert shown["ratelimit"]["redis_url"] == "<redacted>"
    assert shown["ownership"]["redis_url"] == "<redacted>"
    assert "x" * 40 not in repr(shown) and "pw@" not in repr(shown)


# (upstream.url, upstream.uploads_url): `{uploads_url}REST` could be the ChatKit endpoint itself.
UPLOADS_ABOVE_THE_ENDPOINT = [
    pytest.param("http://b:8001/chatkit", "http://b:8001/", id="root"),
    pytest.param("http://b:8001/api/chatkit", "http://b:8001/api/", id="parent"),
    pytest.param("http://b:8001/chatkit/", "http://b:8001/chatkit/", id="endpoint-itself"),
    pytest.param("http://B:8001/chatkit", "http://b:8001/", id="host-case"),
    pytest.param("http://b/chatkit", "http://b:80/", id="default-port-written"),
    pytest.param("https://b/chatkit", "https://b:443/", id="default-https-port"),
    pytest.param("http://b:8001/chatkit", "HTTP://b:8001/", id="scheme-case"),
    pytest.param("http://b:8001/api/chatkit", "http://b:8001/%61pi/", id="encoded-path"),
    pytest.param("http://b:8001", "http://b:8001/", id="endpoint-at-root"),
]
# Uploads of their own: another path, host, port or scheme.
UPLOADS_OF_THEIR_OWN = [
    pytest.param("http://b:8001/chatkit", "http://b:8001/uploads/", id="sibling-path"),
    pytest.param("http://b:8001/chatkit", "http://b:8001/chatkit-uploads/", id="shared-word"),
    pytest.param("http://b:8001/chatkit", "http://files:8001/", id="other-host"),
    pytest.param("http://b:8001/chatkit", "http://b:8002/", id="other-port"),
    pytest.param("http://b/chatkit", "https://b/", id="other-scheme"),
]


@pytest.mark.parametrize(("url", "uploads_url"), UPLOADS_ABOVE_THE_ENDPOINT)
def test_an_uploads_url_above_the_chatkit_endpoint_is_refused_naming_both_keys(url: str, uploads_url: str) -> None:
    environ = {**MINIMAL, "CHATKIT_GATEWAY__UPSTREAM__URL": url, "CHATKIT_GATEWAY__UPSTREAM__UPLOADS_URL": uploads_url}
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert re.search(r"upstream\.uploads_url: .*upstream\.url", str(caught.value)), caught.value


@pytest.mark.parametrize(("url", "uploads_url"), UPLOADS_OF_THEIR_OWN)
def test_an_uploads_url_beside_the_chatkit_endpoint_is_accepted(url: str, uploads_url: str) -> None:
    environ = {**MINIMAL, "CHATKIT_GATEWAY__UPSTREAM__URL": url, "CHATKIT_GATEWAY__UPSTREAM__UPLOADS_URL": uploads_url}
    assert load_config(environ=environ).upstream.uploads_url == uploads_url


def test_serve_refuses_to_start_with_uploads_above_the_chatkit_endpoint(tmp_path: Path) -> None:
    config = tmp_path / "uploads.toml"
    config.write_text(
        EXAMPLE.read_text().replace(
            '# uploads_url = "http://127.0.0.1:8001/uploads/"', 'uploads_url = "http://127.0.0.1:8001/"'
        )
    )
    result = run_cli("serve", "--config", str(config), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "upstream.uploads_url" in result.stderr and "upstream.url" in result.stderr.replace("uploads_url", "")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def test_check_config_prints_the_effective_config_with_secrets_redacted() -> None:
    env = {"PATH": "/usr/bin:/bin", "CHATKIT_GATEWAY__UPSTREAM__IDENTITY_SECRET": "y" * 40}
    result = run_cli("check-config", "--config", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stderr
    assert '"identity_secret": "<redacted>"' in result.stdout
    assert "y" * 40 not in result.stdout + result.stderr
    assert '"url": "http://127.0.0.1:8001/chatkit"' in result.stdout


def test_check_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('format = "json"', 'format = "yaml"'))
    result = run_cli("check-config", "--config", str(bad), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "logging.format" in result.stderr


def test_check_config_reads_the_path_from_the_environment() -> None:
    result = run_cli("check-config", env={"PATH": "/usr/bin:/bin", "CHATKIT_GATEWAY_CONFIG": str(EXAMPLE)})
    assert result.returncode == 0, result.stderr


def test_check_config_reports_an_unreadable_file() -> None:
    result = run_cli("check-config", "--config", "/nonexistent.toml", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "/nonexistent.toml" in result.stderr


def test_version_prints_the_package_version() -> None:
    from gateway import __version__

    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.strip() == f"chatkit-gateway {__version__}"


def test_serve_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nurl = "nope"\n')
    result = run_cli("serve", "--config", str(bad), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "upstream.url" in result.stderr


def with_issuers(*prefixes: str | None) -> dict[str, str]:
    """MINIMAL with one issuer per item, each with that `user_id_prefix` (None: left at its default)."""
    entries = [
        f'{{issuer = "https://idp{index}.example.com", audiences = ["chatkit"]'
        + ("" if prefix is None else f', user_id_prefix = "{prefix}"')
        + "}"
        for index, prefix in enumerate(prefixes)
    ]
    return {**MINIMAL, "CHATKIT_GATEWAY__AUTH__ISSUERS": f"[{', '.join(entries)}]"}


@pytest.mark.parametrize(
    ("prefixes", "named"),
    [
        ((None, None), r"entries 0 \(https://idp0\.example\.com\) and 1 \(https://idp1\.example\.com\)"),
        (("", None), r"entries 0 \(https://idp0\.example\.com\) and 1 \(https://idp1\.example\.com\)"),
        (("a:", "b:", "a:"), r"entries 0 \(https://idp0\.example\.com\) and 2 \(https://idp2\.example\.com\)"),
    ],
    ids=["both-default", "default-and-empty", "first-and-third"],
)
def test_several_issuers_with_one_user_id_prefix_are_refused_naming_the_entries(
    prefixes: tuple[str | None, ...], named: str
) -> None:
    with pytest.raises(ConfigError, match=rf"auth\.issuers: {named} have the same user_id_prefix"):
        load_config(environ=with_issuers(*prefixes))


def test_distinct_user_id_prefixes_are_accepted_and_one_issuer_needs_none() -> None:
    config = load_config(environ=with_issuers("corp:", "partner:"))
    assert [issuer.user_id_prefix for issuer in config.auth.issuers] == ["corp:", "partner:"]
    assert load_config(environ=MINIMAL).auth.issuers[0].user_id_prefix == ""


def test_serve_refuses_to_start_with_two_issuers_and_one_prefix(tmp_path: Path) -> None:
    config = tmp_path / "two.toml"
    config.write_text(
        '[upstream]\nurl = "http://127.0.0.1:8001/chatkit"\n'
        '[[auth.issuers]]\nissuer = "https://a.example.com"\naudiences = ["chatkit"]\n'
        '[[auth.issuers]]\nissuer = "https://b.example.com"\naudiences = ["chatkit"]\n'
    )
    result = run_cli("serve", "--config", str(config), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "https://a.example.com" in result.stderr and "https://b.example.com" in result.stderr
    assert "user_id_prefix" in result.stderr
