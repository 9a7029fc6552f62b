"""Fuzz target: ``Authorization`` header parsing and token verification.

Run it (atheris, coverage-guided)::

    pip install -e '.[fuzz]' && python fuzz/fuzz_headers.py fuzz/corpus -max_total_time=60

libFuzzer adds the inputs it finds interesting to the first directory named: to
keep the committed seeds small, name a scratch directory first
(``python fuzz/fuzz_headers.py /tmp/jwt-corpus fuzz/corpus -max_total_time=60``).
A crash is saved as ``crash-<sha1>`` in the working directory; replay it with
``python fuzz/fuzz_headers.py --replay crash-<sha1>``.

Without atheris, or with ``--replay``, the same target runs once over every file
given (directories: every file in them; default ``fuzz/corpus``)::

    python fuzz/fuzz_headers.py --replay fuzz/corpus

``tests/security/test_fuzz_corpus.py`` does that in CI.

The target is ``jwt_audit_middleware.verifier.extract_token`` and then
``Verifier.verify`` against one fixed configuration (HS256 with a fuzz-only
secret of no value, an issuer, an audience, a fixed clock).  Only ``Denied``
may come out of them: any other exception fails the run.  The first byte of
an input picks how the rest is used:

- 0: one ``Authorization`` value (the bytes as latin-1, as a server hands them on);
- 1: ``Bearer`` and the rest as the token;
- 2: several ``Authorization`` values, one per line;
- 3: a JOSE header and a payload (any bytes), split at the first newline,
  base64url-encoded and signed with the fuzz secret: the claims checks run too.

Other first bytes are taken modulo 4; an empty input is mode 0 with no value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from jwt_audit_middleware import Settings, VerifiedToken
from jwt_audit_middleware.errors import Denied
from jwt_audit_middleware.events import REASONS, fingerprint
from jwt_audit_middleware.verifier import Verifier, extract_token

#: worthless by design: published here so that the corpus can hold tokens that verify
FUZZ_SECRET = b"fuzz-only HMAC secret, of no value anywhere else."
ISSUER = "https://idp.example"
AUDIENCE = "api"
#: the verifier's clock (2030-03-17): tokens in the corpus stay valid or expired for good
NOW = 1_900_000_000.0
CORPUS = Path(__file__).resolve().parent / "corpus"

SETTINGS = Settings(
    algorithms=["HS256"],
    secret=FUZZ_SECRET,
    issuer=ISSUER,
    audience=AUDIENCE,
    leeway=30,
    max_token_bytes=16_384,
    cache_size=0,
)
VERIFIER = Verifier(SETTINGS, clock=lambda: NOW)


def b64(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(header: bytes, payload: bytes) -> str:
    """A compact JWS of these exact header and payload bytes, HS256 with the fuzz secret."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    digest = hmac.new(FUZZ_SECRET, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(digest)}"


def header_values(data: bytes) -> list[str]:
    """The ``Authorization`` values an input stands for (see the module docstring)."""
    if not data:
        return []
    mode, rest = data[0] % 4, data[1:]
    if mode == 0:
        return [rest.decode("latin-1")]
    if mode == 1:
        return ["Bearer " + rest.decode("latin-1")]
    if mode == 2:
        return [line.decode("latin-1") for line in rest.split(b"\n")]
    header, _, payload = rest.partition(b"\n")
    return ["Bearer " + sign(header, payload)]


def fuzz_one_input(data: bytes) -> None:
    """Parse and verify; anything but a ``Denied`` (or a verified token) is a failure."""
    values = header_values(data)
    token = ""
    try:
        token = extract_token(values, SETTINGS.max_token_bytes)
        verified: VerifiedToken | Denied = VERIFIER.verify(token, fingerprint(token))
    except Denied as denied:
        verified = denied
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__} escaped the verifier") from exc
    if isinstance(verified, Denied):  # a reason of the contract, a detail without the token
        assert verified.reason in REASONS, verified.reason
        assert len(token) < 16 or token not in verified.detail
        return
    assert isinstance(verified, VerifiedToken)
    assert verified.issuer == ISSUER
    assert AUDIENCE in verified.audience


def corpus_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every file named, and every file in each directory named, in a stable order."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    return files


def replay(paths: Iterable[str | Path] = (CORPUS,)) -> int:
    """Run the target once over each corpus file; the number of files run."""
    files = corpus_files(paths)
    for file in files:
        fuzz_one_input(file.read_bytes())
    return len(files)


def main(argv: Sequence[str]) -> int:
    """Fuzz with atheris when it is installed, else (or with ``--replay``) replay."""
    args = list(argv[1:])
    if "--replay" not in args:
        try:
            import atheris  # noqa: PLC0415 - optional: the fuzz extra
        except ImportError:
            print("atheris is not installed (pip install -e '.[fuzz]'): replaying the corpus")
        else:
            atheris.instrument_all()
            atheris.Setup([argv[0], *args], fuzz_one_input)
            atheris.Fuzz()
            return 0
    paths = [a for a in args if not a.startswith("-")] or [str(CORPUS)]
    count = replay(paths)
    print(f"{count} inputs replayed, only Denied came out")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
