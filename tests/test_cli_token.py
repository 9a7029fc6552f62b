"""jwt-audit keygen and token (test keys and tokens), SigningKey saved and loaded, --help."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from jwt_audit_middleware import Settings
from jwt_audit_middleware.cli import main
from jwt_audit_middleware.events import fingerprint
from jwt_audit_middleware.testing import SigningKey
from jwt_audit_middleware.verifier import Verifier


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """main() stops jwt_audit propagating (its events would print twice): undo it."""
    logger = logging.getLogger("jwt_audit")
    propagate = logger.propagate
    yield
    logger.propagate = propagate


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``jwt-audit *argv`` in-process: exit status, stdout, stderr."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def mint(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    status, out, err = run(capsys, "token", *argv)
    assert (status, err) == (0, ""), err
    assert out.count("\n") == 1  # the token, and nothing else
    return out.strip()


@pytest.fixture
def pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    status, out, err = run(
        capsys, "keygen", "--private-key-file", str(private), "--public-key-file", str(public)
    )
    assert (status, err) == (0, "")
    assert "private.pem" in out
    assert "public.pem" in out
    assert "PRIVATE KEY" not in out
    return private, public


# -- keygen ----------------------------------------------------------------------------


def test_keygen_writes_a_private_key_for_its_owner_only_and_the_public_pem(
    pair: tuple[Path, Path],
) -> None:
    private, public = pair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    key = SigningKey.from_private_pem(private)
    assert key.alg == "RS256"
    assert key.public_pem == public.read_text()


def test_keygen_never_overwrites(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = pair
    before = private.read_bytes()
    status, _out, err = run(
        capsys, "keygen", "--private-key-file", str(private), "--public-key-file", str(public)
    )
    assert status == 2
    assert "exists: not overwritten" in err
    assert "Traceback" not in err
    assert private.read_bytes() == before


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256"])
def test_keygen_other_algorithms(
    alg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    status, _, _ = run(
        capsys,
        "keygen",
        "--alg",
        alg,
        "--private-key-file",
        str(private),
        "--public-key-file",
        str(public),
    )
    assert status == 0
    token = mint(capsys, "--private-key-file", str(private), "--alg", alg)
    settings = Settings(algorithms=[alg], public_key_file=public)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert Verifier(settings).verify(token, fingerprint(token)).claims["sub"] == "alice"


def test_keygen_hs256_writes_a_random_secret_file_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secret.key"
    status, out, err = run(capsys, "keygen", "--alg", "HS256", "--secret-file", str(path))
    assert (status, err) == (0, "")
    secret = path.read_bytes().strip()
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret.decode() not in out
    token = mint(capsys, "--secret-file", str(path), "--sub", "svc")
    assert secret.decode() not in token
    verifier = Verifier(Settings(algorithms=["HS256"], secret_file=path))
    assert verifier.verify(token, fingerprint(token)).claims["sub"] == "svc"


# -- token -----------------------------------------------------------------------------


def test_token_has_the_claims_asked_for(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = pair
    token = mint(
        capsys,
        "--private-key-file",
        str(private),
        "--sub",
        "bob",
        "--scope",
        "orders:read  orders:write",
        "--scope",
        "admin",
        "--aud",
        "orders-api",
        "--iss",
        "https://idp.example.com/",
        "--expires-in",
        "15m",
        "--kid",
        "key-1",
    )
    settings = Settings(
        algorithms=["RS256"],
        public_key_file=public,
        audience="orders-api",
        issuer="https://idp.example.com/",
    )
    claims = Verifier(settings).verify(token, fingerprint(token)).claims
    assert claims["sub"] == "bob"
    assert claims["scope"] == "orders:read orders:write admin"
    assert claims["aud"] == "orders-api"
    assert claims["iss"] == "https://idp.example.com/"
    assert abs(claims["exp"] - (time.time() + 900)) < 60
    assert jwt.get_unverified_header(token)["kid"] == "key-1"


def test_several_audiences_make_a_list(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    token = mint(capsys, "--private-key-file", str(pair[0]), "--aud", "a", "--aud", "b")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == ["a", "b"]


@pytest.mark.parametrize("form", [["--expires-in", "-5m"], ["--expires-in=-5m"]])
def test_a_negative_lifetime_mints_an_expired_token(
    form: list[str], pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = pair
    token = mint(capsys, "--private-key-file", str(private), *form)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert abs(claims["exp"] - (time.time() - 300)) < 60
    status, out, _ = run(
        capsys, "explain", token, "--algorithms", "RS256", "--public-key-file", str(public)
    )
    assert status == 1
    assert "reason:      expired" in out


@pytest.mark.parametrize(
    ("value", "seconds"), [("300", 300), ("2h", 7200), ("1d", 86400), ("90s", 90), ("-1h", -3600)]
)
def test_lifetimes(
    value: str, seconds: int, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    token = mint(capsys, "--private-key-file", str(pair[0]), f"--expires-in={value}")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == seconds


def test_never_leaves_exp_out(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(capsys, "--private-key-file", str(pair[0]), "--expires-in", "never")
    assert "exp" not in jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--expires-in", "3days"], "--expires-in '3days': use seconds or a number"),
        (["--alg", "ES256"], "this RSA key cannot sign ES256"),
        (["--alg", "HS256"], "this RSA key cannot sign HS256"),
    ],
)
def test_token_errors_are_one_line(
    argv: list[str], message: str, pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "token", "--private-key-file", str(pair[0]), *argv)
    assert status == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


def test_key_file_errors_name_the_file_and_never_show_its_content(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = pair
    status, _, err = run(capsys, "token", "--private-key-file", str(tmp_path / "nope.pem"))
    assert status == 2
    assert "--private-key-file: cannot read" in err
    assert "No such file or directory" in err
    status, _, err = run(capsys, "token", "--private-key-file", str(public))
    assert (status, "not an unencrypted private key" in err) == (2, True)
    status, _, err = run(capsys, "token", "--secret-file", str(private))
    assert (status, "holds a PEM key" in err) == (2, True)
    body = private.read_text().splitlines()[1]
    assert body not in err
    short = tmp_path / "short"
    short.write_text("too-short-secret\n")
    status, _, err = run(capsys, "token", "--secret-file", str(short), "--alg", "HS384")
    assert status == 2
    assert "HS384 needs a secret of at least 48 bytes" in err
    assert "too-short-secret" not in err


def test_token_needs_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "token", "--sub", "x")
    assert status == 2
    assert "--private-key-file" in err


def test_the_console_script_writes_the_token_to_stdout_only(pair: tuple[Path, Path]) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "jwt_audit_middleware.cli", "token"),
            *("--private-key-file", str(pair[0]), "--expires-in", "-5m"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stderr == ""
    assert result.stdout.count(".") == 2
    assert result.stdout.endswith("\n")


# -- SigningKey saved and loaded ---------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES512", "EdDSA"])
def test_a_saved_key_loads_again_and_signs_alike(alg: str, tmp_path: Path) -> None:
    key = SigningKey.generate(alg, kid="k1")
    path = tmp_path / "key.pem"
    key.save_private_pem(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for source in (path, str(path), path.read_bytes(), path.read_text()):
        loaded = SigningKey.from_private_pem(source, kid="k1")
        assert loaded.alg == alg
        assert loaded.public_pem == key.public_pem
        token = loaded.token(sub="carol")
        settings = Settings(**key.options())
        assert Verifier(settings).verify(token, fingerprint(token)).claims["sub"] == "carol"


def test_the_algorithm_may_be_named_if_the_key_suits_it(tmp_path: Path) -> None:
    key = SigningKey.generate("RS256")
    assert SigningKey.from_private_pem(key.private_pem, alg="PS384").alg == "PS384"
    with pytest.raises(ValueError, match="cannot sign ES256"):
        SigningKey.from_private_pem(key.private_pem, alg="ES256")
    with pytest.raises(ValueError, match="not an unencrypted private key"):
        SigningKey.from_private_pem(str(key.public_pem))


def test_save_refuses_an_existing_file_and_a_symlink(tmp_path: Path) -> None:
    key = SigningKey.generate("ES256")
    existing = tmp_path / "existing.pem"
    existing.write_text("keep me")
    with pytest.raises(FileExistsError):
        key.save_private_pem(existing)
    assert existing.read_text() == "keep me"
    link = tmp_path / "link.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(FileExistsError):
        key.save_private_pem(link)
    assert not (tmp_path / "elsewhere.pem").exists()


def test_a_saved_key_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        SigningKey.generate("EdDSA").save_private_pem(tmp_path / "k.pem")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_an_hmac_key_has_no_pem() -> None:
    with pytest.raises(ValueError, match="no PEM"):
        SigningKey.generate("HS256").save_private_pem("never-written.pem")
    assert not os.path.exists("never-written.pem")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA", "HS256"])
def test_repr_never_shows_the_private_key(alg: str) -> None:
    key = SigningKey.generate(alg, kid="k")
    text = repr(key) + str(key) + f"{key}"
    if alg.startswith("HS"):
        for form in (key.secret.hex(), repr(key.secret), key.secret.decode("latin-1")):
            assert form not in text
    else:
        body = "".join(key.private_pem.splitlines()[1:-1])
        assert "PRIVATE" not in text
        for line in key.private_pem.splitlines()[1:-1]:
            assert line not in text
        assert body not in text
    assert text.startswith("SigningKey(alg=")


def test_a_loaded_key_is_never_logged(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = mint(capsys, "--private-key-file", str(pair[0]))
    material = pair[0].read_text().splitlines()[1]
    assert all(material not in record.getMessage() for record in caplog.records)
    assert all(token not in record.getMessage() for record in caplog.records)


# -- --help and --version ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["demo", "--help"],
        ["report", "--help"],
        ["explain", "--help"],
        ["keygen", "--help"],
        ["token", "--help"],
    ],
)
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, *argv)
    assert status == 0
    assert "``" not in out
    assert "usage: jwt-audit" in out


def test_token_help_says_it_is_for_tests(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "token", "--help")
    assert "test tool" in out
    assert "stdout" in out
    assert "--expires-in" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out == f"jwt-audit {version('jwt-audit-middleware')}\n"
