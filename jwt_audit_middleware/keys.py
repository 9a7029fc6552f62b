"""Key sources: key material in, prepared verification keys out.

Everything here runs at start-up (or, for remote key sets, off the request
path).  Each key is bound to the algorithms its type allows and that the
configuration allows, so a token can never make an RSA public key act as an
HMAC secret (the classic algorithm-confusion attack) and an HMAC secret is never
tried for ``RS256``.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import get_algorithm_by_name
from jwt.algorithms import (
    ECAlgorithm,
    HMACAlgorithm,
    OKPAlgorithm,
    RSAAlgorithm,
    RSAPSSAlgorithm,
    get_default_algorithms,
)
from jwt.exceptions import InvalidKeyError, PyJWKError

from .errors import ConfigurationError

#: Algorithms PyJWT implements, minus ``none``.
SUPPORTED_ALGORITHMS = frozenset(get_default_algorithms()) - {"none"}

_EC_CURVES = {
    "ES256": "secp256r1",
    "ES256K": "secp256k1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
    "ES521": "secp521r1",
}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_MIN_RSA_BITS = 2048
MAX_KID_LENGTH = 256


def is_hmac(alg: str) -> bool:
    """True for ``HS256``/``HS384``/``HS512``."""
    return alg.startswith("HS")


def algorithms_for_key(key: object, allowed: Iterable[str]) -> frozenset[str]:
    """The allowed algorithms a prepared key object can verify."""
    if isinstance(key, bytes):
        return frozenset(a for a in allowed if is_hmac(a))
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset(a for a in allowed if a[:2] in ("RS", "PS"))
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset(a for a in allowed if _EC_CURVES.get(a) == key.curve.name)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset(a for a in allowed if a in ("EdDSA", "Ed25519", "Ed448"))
    return frozenset()


#: A prepared signature check: ``check(signature, signing_input)`` is true when
#: the signature verifies.  Built once per key and algorithm by ``bind_check``.
SignatureCheck = Callable[[bytes, bytes], bool]


def bind_check(alg: str, key: object) -> SignatureCheck:
    """The signature check of ``alg`` with ``key``, with everything per-key prepared now.

    The maths is PyJWT's algorithm for ``alg`` (its hash, padding and encoding
    choices) run through ``cryptography``/``hmac`` directly, so a request pays
    for no padding, hash or DER-decoder objects and no isinstance checks.  A
    key whose type cannot verify ``alg`` (an RSA key for ``HS256``, a P-384 key
    for ``ES256``, ...) is a ``ValueError``: binding is checked here, once.
    """
    if alg not in algorithms_for_key(key, (alg,)):
        raise ValueError(f"a {_describe(key)} key cannot verify {alg}")
    algorithm = get_algorithm_by_name(alg)
    if isinstance(algorithm, HMACAlgorithm) and isinstance(key, bytes):
        return _hmac_check(key, algorithm.hash_alg)
    if isinstance(algorithm, RSAPSSAlgorithm) and isinstance(key, rsa.RSAPublicKey):
        digest = algorithm.hash_alg()
        pss = padding.PSS(mgf=padding.MGF1(algorithm.hash_alg()), salt_length=digest.digest_size)
        return _rsa_check(key, pss, digest)
    if isinstance(algorithm, RSAAlgorithm) and isinstance(key, rsa.RSAPublicKey):
        return _rsa_check(key, padding.PKCS1v15(), algorithm.hash_alg())
    if isinstance(algorithm, ECAlgorithm) and isinstance(key, ec.EllipticCurvePublicKey):
        expected = algorithm.expected_curve
        if expected is not None and not isinstance(key.curve, expected):  # pragma: no cover
            raise ValueError(f"a {_describe(key)} key cannot verify {alg}")
        return _ecdsa_check(key, ec.ECDSA(algorithm.hash_alg()))
    if isinstance(algorithm, OKPAlgorithm) and isinstance(
        key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
    ):
        return _eddsa_check(key)
    # an algorithm PyJWT may add later: its own verify, per call
    return lambda signature, message: bool(algorithm.verify(message, key, signature))


def _hmac_check(secret: bytes, hash_alg: Any) -> SignatureCheck:
    digest = hmac.digest
    compare = hmac.compare_digest

    def check(signature: bytes, message: bytes) -> bool:
        return compare(signature, digest(secret, message, hash_alg))

    return check


def _rsa_check(
    key: rsa.RSAPublicKey, pad: padding.AsymmetricPadding, digest: hashes.HashAlgorithm
) -> SignatureCheck:
    verify = key.verify

    def check(signature: bytes, message: bytes) -> bool:
        try:
            verify(signature, message, pad, digest)
        except InvalidSignature:
            return False
        return True

    return check


def _ecdsa_check(key: ec.EllipticCurvePublicKey, ecdsa: ec.ECDSA) -> SignatureCheck:
    size = (key.curve.key_size + 7) // 8  # RFC 7518 §3.4: R and S, each this many octets
    verify = key.verify
    from_bytes = int.from_bytes

    def check(signature: bytes, message: bytes) -> bool:
        if len(signature) != 2 * size:
            return False
        der = encode_dss_signature(
            from_bytes(signature[:size], "big"), from_bytes(signature[size:], "big")
        )
        try:
            verify(der, message, ecdsa)
        except InvalidSignature:
            return False
        return True

    return check


def _eddsa_check(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> SignatureCheck:
    verify = key.verify

    def check(signature: bytes, message: bytes) -> bool:
        try:
            verify(signature, message)
        except InvalidSignature:
            return False
        return True

    return check


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A prepared public key (or HMAC secret) and the algorithms it may verify."""

    key: Any
    algorithms: frozenset[str]
    kid: str | None = None

    def __repr__(self) -> str:  # never show key material
        return f"VerificationKey(kid={self.kid!r}, algorithms={sorted(self.algorithms)!r})"


#: Keys without a ``kid`` tried per token and algorithm, at most.  An issuer that
#: publishes more keys than this names them with ``kid`` (every IdP does).
MAX_KIDLESS_CANDIDATES = 4


class KeyRing:
    """An immutable set of verification keys, indexed for the hot path.

    ``candidates(alg, kid)`` is one or two dict look-ups.  A token with a
    ``kid`` is tried against the key with that ``kid`` and against keys that
    have none (a configured secret or PEM); a token without a ``kid`` against
    the keys that have none, or the single keyed key of its algorithm.  At most
    ``MAX_KIDLESS_CANDIDATES`` keys without a ``kid`` are tried, so a token
    costs a bounded number of signature checks whatever the key set holds.
    ``checks(alg, kid)`` gives the same keys' prepared signature checks
    (``bind_check``), built here, once per key and algorithm.
    """

    __slots__ = (
        "_anonymous",
        "_anonymous_checks",
        "_by_kid",
        "_checks",
        "_single",
        "algorithms",
        "keys",
    )

    def __init__(self, keys: Sequence[VerificationKey], algorithms: Iterable[str]) -> None:
        self.keys = tuple(keys)
        self.algorithms = frozenset(algorithms)
        by_kid: dict[tuple[str, str], tuple[VerificationKey, ...]] = {}
        anonymous: dict[str, tuple[VerificationKey, ...]] = {}
        keyed_per_alg: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            for alg in key.algorithms:
                if key.kid is None:
                    anonymous[alg] = (*anonymous.get(alg, ()), key)
                else:
                    by_kid[(alg, key.kid)] = (key,)
                    keyed_per_alg.setdefault(alg, []).append(key)
        # a token is tried against at most MAX_KIDLESS_CANDIDATES keys without a kid:
        # 100 kid-less ES256 keys made each forged token cost 7.8 ms
        anonymous = {alg: keys[:MAX_KIDLESS_CANDIDATES] for alg, keys in anonymous.items()}
        self._anonymous = anonymous
        self._by_kid = {k: v + anonymous.get(k[0], ()) for k, v in by_kid.items()}
        self._single = {
            alg: (*anonymous.get(alg, ()), *(keys if len(keys) == 1 else ()))
            for alg, keys in keyed_per_alg.items()
        }
        bound = {
            (alg, index): bind_check(alg, key.key)
            for index, key in enumerate(self.keys)
            for alg in key.algorithms
        }
        position = {id(key): index for index, key in enumerate(self.keys)}

        def checks(alg: str, keys: tuple[VerificationKey, ...]) -> tuple[SignatureCheck, ...]:
            return tuple(bound[(alg, position[id(key)])] for key in keys)

        self._anonymous_checks = {alg: checks(alg, keys) for alg, keys in anonymous.items()}
        self._checks: dict[tuple[str, str | None], tuple[SignatureCheck, ...]] = {
            (alg, None): checks(alg, keys) for alg, keys in self._single.items()
        }
        self._checks.update({k: checks(k[0], v) for k, v in self._by_kid.items()})

    def candidates(self, alg: str, kid: str | None) -> tuple[VerificationKey, ...]:
        """The keys to try for a token signed with ``alg`` and naming ``kid``."""
        if kid is None:
            return self._single.get(alg) or self._anonymous.get(alg, ())
        return self._by_kid.get((alg, kid)) or self._anonymous.get(alg, ())

    def checks(self, alg: str, kid: str | None) -> tuple[SignatureCheck, ...]:
        """The prepared signature checks of ``candidates(alg, kid)``, in the same order."""
        return self._checks.get((alg, kid)) or self._anonymous_checks.get(alg, ())

    def usable_algorithms(self) -> frozenset[str]:
        """Algorithms for which at least one key is present."""
        return frozenset(alg for key in self.keys for alg in key.algorithms)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"KeyRing({len(self.keys)} keys, algorithms={sorted(self.algorithms)!r})"


def build_keyring(
    algorithms: Sequence[str],
    *,
    secret: bytes | None = None,
    public_keys: object = None,
    jwks: object = None,
    jwks_option: str = "jwks",
) -> KeyRing:
    """Validate key material against ``algorithms`` and prepare every key once.

    Raises ``ConfigurationError`` naming the option at fault; messages never
    contain key material.
    """
    check_algorithms(algorithms)
    keys: list[VerificationKey] = []
    if secret is not None:
        keys.append(_secret_key(secret, algorithms))
    if public_keys is not None:
        keys.extend(_pem_keys(public_keys, algorithms))
    if jwks is not None:
        try:
            keys.extend(parse_jwks(jwks, algorithms))
        except ValueError as exc:
            raise ConfigurationError(jwks_option, str(exc)) from None
    if not keys:
        raise ConfigurationError(
            "algorithms",
            "no key configured: set secret, secret_file, public_key, jwks, jwks_file,"
            " jwks_url or providers",
        )
    ring = KeyRing(keys, algorithms)
    missing = set(algorithms) - ring.usable_algorithms()
    if missing:
        raise ConfigurationError(
            "algorithms",
            f"no configured key can verify {sorted(missing)}; remove them or add a key",
        )
    return ring


#: Key files are a few kilobytes; a larger one is the wrong file (or a device).
MAX_KEY_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True, eq=False)
class LoadedKeys:
    """What ``load_keyring`` made of one key source: the prepared keys and the options.

    The options come back normalised, as the configuration keeps them: the
    HMAC ``secret`` as bytes, ``public_key`` as a PEM string (or bytes) or a
    tuple of them, ``jwks`` as a dict copy of a mapping or as JSON text.  What
    was read from ``secret_file`` or ``jwks_file`` is in ``secret``/``jwks``,
    so the configuration can be rebuilt without the file (a pickled copy).
    """

    keyring: KeyRing
    secret: bytes | None = None
    public_key: str | bytes | tuple[str | bytes, ...] | None = None
    jwks: dict[str, Any] | str | None = None

    def __repr__(self) -> str:  # never show key material
        return f"LoadedKeys({self.keyring!r})"


def load_keyring(
    where: str,
    algorithms: Sequence[str],
    *,
    secret: object = None,
    secret_file: object = None,
    public_key: object = None,
    public_key_file: object = None,
    jwks: object = None,
    jwks_file: object = None,
    algorithms_option: str = "algorithms",
) -> LoadedKeys:
    """Read, normalise and prepare the static keys of the top-level options or of a provider.

    The one place where ``secret_file``, ``public_key_file`` (a path or a
    list of paths, each holding one or more PEM blocks) and ``jwks_file`` are
    read: a secret file loses one trailing line ending (LF or CR LF, as
    editors and ``echo`` add; a binary secret keeps its other bytes), a JWKS
    file must be UTF-8 JSON.  A file that cannot be read is named in the
    error by its path.  A ``str`` secret becomes its UTF-8 bytes.  ``where`` prefixes
    the option names of errors (``""`` for the top level, ``"providers[1]"``
    for a provider), so ``ConfigurationError`` names the option as the user
    wrote it: ``secret_file`` rather than ``secret`` when the secret came from
    the file, ``providers[1].jwks_file``.  Errors about ``algorithms`` (no key
    can verify one of them) name ``algorithms_option``.  Messages never
    contain key material.
    """

    def name(option: str) -> str:
        return f"{where}.{option}" if where else option

    if secret_file is not None:
        if secret is not None:
            raise ConfigurationError(
                name("secret_file"), "give either secret or secret_file, not both"
            )
        secret = _strip_line_ending(read_key_file(name("secret_file"), secret_file))
    secret = _secret_bytes(name("secret"), secret)
    if public_key_file is not None:
        if public_key is not None:
            raise ConfigurationError(
                name("public_key_file"), "give either public_key or public_key_file, not both"
            )
        public_key = _read_pem_files(name("public_key_file"), public_key_file)
    if jwks_file is not None:
        if jwks is not None:
            raise ConfigurationError(name("jwks_file"), "give either jwks or jwks_file, not both")
        jwks = read_key_file(name("jwks_file"), jwks_file)
    document = _jwks_document(name("jwks_file" if jwks_file is not None else "jwks"), jwks)
    try:
        keyring = build_keyring(algorithms, secret=secret, public_keys=public_key, jwks=document)
    except ConfigurationError as exc:
        option = {
            "algorithms": algorithms_option,
            "secret": "secret" if secret_file is None else "secret_file",
            "public_key": "public_key" if public_key_file is None else "public_key_file",
            "jwks": "jwks" if jwks_file is None else "jwks_file",
        }.get(exc.option, exc.option)
        raise ConfigurationError(name(option), str(exc)[len(exc.option) + 2 :]) from None
    if public_key is not None and not isinstance(public_key, (str, bytes)):
        # build_keyring has checked it: a sequence of PEM strings
        public_key = tuple(cast("Sequence[str | bytes]", public_key))
    return LoadedKeys(keyring, secret, public_key, document)


def read_key_file(option: str, path: object) -> bytes:
    """The content of a key file (at most ``MAX_KEY_FILE_BYTES``), or ``ConfigurationError``."""
    if not isinstance(path, (str, bytes, os.PathLike)):  # an int would open a file descriptor
        raise ConfigurationError(option, f"expected a file path, got {type(path).__name__}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        shown = os.fsdecode(path).encode("unicode_escape").decode("ascii")  # one safe line
        raise ConfigurationError(option, f"cannot read '{shown}' ({reason})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigurationError(
            option, f"the file is larger than {MAX_KEY_FILE_BYTES // 1024} KiB: not a key file"
        )
    return data


def _read_pem_files(option: str, paths: object) -> bytes | tuple[bytes, ...]:
    """The content of ``public_key_file``: one path, or a list of paths (read in order)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        return read_key_file(option, paths)
    if not isinstance(paths, Sequence) or not paths:
        raise ConfigurationError(option, "expected a file path or a list of file paths")
    return tuple(read_key_file(option, path) for path in paths)


def _strip_line_ending(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def _secret_bytes(option: str, secret: object) -> bytes | None:
    if isinstance(secret, str):
        try:
            return secret.encode()
        except UnicodeEncodeError:  # lone surrogates, e.g. undecodable bytes in os.environ
            raise ConfigurationError(option, "is not valid Unicode text") from None
    if secret is not None and not isinstance(secret, bytes):
        raise ConfigurationError(option, "expected str or bytes")
    return secret


def _jwks_document(option: str, jwks: object) -> dict[str, Any] | str | None:
    if jwks is None or isinstance(jwks, str):
        return jwks
    if isinstance(jwks, Mapping):
        return dict(jwks)
    if isinstance(jwks, bytes):
        try:
            return jwks.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(option, "is not UTF-8 text") from None
    raise ConfigurationError(option, 'expected a JWKS document: {"keys": [...]}')


def check_algorithms(algorithms: Iterable[str], option: str = "algorithms") -> None:
    """Refuse ``none`` and algorithms PyJWT does not implement."""
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigurationError(option, "'none' is refused: tokens must be signed")
        if alg not in SUPPORTED_ALGORITHMS:
            raise ConfigurationError(
                option,
                f"unknown algorithm {alg!r}; use one of {sorted(SUPPORTED_ALGORITHMS)}",
            )


def _secret_key(secret: bytes, algorithms: Sequence[str]) -> VerificationKey:
    hmac_algs = [alg for alg in algorithms if is_hmac(alg)]
    if not hmac_algs:
        raise ConfigurationError("secret", "is set but algorithms has no HS256/HS384/HS512")
    for alg in hmac_algs:
        verifier = get_algorithm_by_name(alg)
        try:
            prepared = verifier.prepare_key(secret)
        except InvalidKeyError:
            raise ConfigurationError(
                "secret", "looks like a PEM/SSH key, certificate or JWK; HMAC needs a random secret"
            ) from None
        if verifier.check_key_length(prepared) is not None:
            minimum = int(alg[2:]) // 8
            raise ConfigurationError(
                "secret",
                f"is {len(secret)} bytes; {alg} needs at least {minimum} (RFC 7518 §3.2)",
            )
    return VerificationKey(secret, frozenset(hmac_algs))


def _pem_blocks(value: object) -> list[bytes]:
    single = isinstance(value, (str, bytes))
    items: object = [value] if single else value
    if not isinstance(items, Sequence) or not items:
        raise ConfigurationError("public_key", "expected a PEM string or a list of PEM strings")
    blocks: list[bytes] = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, (str, bytes)):
            raise ConfigurationError("public_key", "every entry must be a PEM string")
        data = item.encode(errors="replace") if isinstance(item, str) else item
        if b"\n" not in data and b"\\n" in data:  # one line from an .env file: "...\\n..."
            data = data.replace(b"\\n", b"\n")
        found = [m.group(0) for m in _PEM_BLOCK.finditer(data)]
        if not found:
            where = "" if single else f"entry #{number} "
            raise ConfigurationError("public_key", where + _no_pem(data))
        blocks.extend(found)
    return blocks


#: A value without a PEM block that a user most likely meant as a file name.
_PATH_LIKE = re.compile(rb"^(~|\.{0,2}/|[A-Za-z]:\\)|\.(pem|crt|cer|pub|key)$", re.IGNORECASE)


def _no_pem(data: bytes) -> str:
    """Why a ``public_key`` value holds no PEM block, and what to do (never the value)."""
    text = data.strip()
    if not text:
        # the usual cause: JWT_PUBLIC_KEY="$(cat public.pem)" with no public.pem there
        return "is empty: give the PEM text (-----BEGIN PUBLIC KEY-----), or public_key_file"
    if b"\n" not in text and b"-----" not in text and _PATH_LIKE.search(text):
        return "looks like a file path: use public_key_file to read a PEM file"
    return "no PEM block found (-----BEGIN ...-----)"


def _pem_keys(value: object, algorithms: Sequence[str]) -> list[VerificationKey]:
    keys = []
    for number, block in enumerate(_pem_blocks(value), 1):
        label = block[11 : block.index(b"-----", 11)].decode()
        where = f"PEM block #{number} ({label})"
        if "PRIVATE" in label:
            raise ConfigurationError(
                "public_key", f"{where} is a private key; configure the public key only"
            )
        try:
            if label == "CERTIFICATE":
                key: object = x509.load_pem_x509_certificate(block).public_key()
            else:
                key = load_pem_public_key(block)
        except ValueError:
            raise ConfigurationError("public_key", f"{where} cannot be parsed") from None
        keys.append(_bind("public_key", where, key, algorithms))
    return keys


def _bind(
    option: str, where: str, key: object, algorithms: Iterable[str], kid: str | None = None
) -> VerificationKey:
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise ConfigurationError(option, f"{where} is RSA-{key.key_size}; at least 2048 bits")
    usable = algorithms_for_key(key, algorithms)
    if not usable:
        raise ConfigurationError(
            option, f"{where} is a {_describe(key)} key, which none of the algorithms can use"
        )
    return VerificationKey(key, usable, kid)


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    return type(key).__name__.replace("PublicKey", "").lstrip("_")


_KTY_ALGORITHM = {"RSA": "RS256", "EC": None, "OKP": "EdDSA", "oct": "HS256"}
_EC_BY_CRV = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}


def parse_jwks(document: object, algorithms: Iterable[str]) -> list[VerificationKey]:
    """Parse a JWKS (mapping or JSON text) into keys usable with ``algorithms``.

    Keys for other uses (``use`` other than ``sig``, ``key_ops`` without
    ``verify``), of types none of the algorithms can use, or whose ``alg`` is
    not allowed are skipped.  A private key, a duplicate ``kid`` or a key that
    does not parse is an error (``ValueError`` with a message safe to log).
    """
    allowed = frozenset(algorithms)
    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):
            raise ValueError("is not valid JSON") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JWKS document: {"keys": [...]}')
    keys: list[VerificationKey] = []
    seen: set[str] = set()
    for number, jwk in enumerate(document["keys"], 1):
        where = f"key #{number}"
        if not isinstance(jwk, Mapping):
            raise ValueError(f"{where} is not a JSON object")
        kid = jwk.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
                raise ValueError(f"{where} has an invalid kid")
            if kid in seen:
                raise ValueError(f"{where}: duplicate kid")
            seen.add(kid)
            where = f"key #{number} (kid {kid[:64]!r})"
        key = _jwk_key(jwk, allowed, where)
        if key is not None:
            keys.append(VerificationKey(key[0], key[1], kid))
    if not keys:
        raise ValueError(f"has no signing key usable with {sorted(allowed)}")
    return keys


def _jwk_key(
    jwk: Mapping[str, Any], allowed: frozenset[str], where: str
) -> tuple[object, frozenset[str]] | None:
    if jwk.get("use", "sig") != "sig":
        return None
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _KTY_ALGORITHM:
        return None
    if "d" in jwk or any(p in jwk for p in ("p", "q", "dp", "dq", "qi")):
        raise ValueError(f"{where} is a private key; publish public keys only")
    crv = jwk.get("crv", "")
    if not isinstance(crv, str):
        return None
    loader_alg = _EC_BY_CRV.get(crv) if kty == "EC" else _KTY_ALGORITHM[kty]
    if loader_alg is None:
        return None
    try:
        key = get_algorithm_by_name(loader_alg).from_jwk(dict(jwk))
    except (InvalidKeyError, PyJWKError, ValueError, TypeError, KeyError):
        raise ValueError(f"{where} cannot be parsed") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"{where} is RSA-{key.key_size}; at least 2048 bits")
    usable = algorithms_for_key(key, allowed)
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str):
            return None
        usable = usable & {alg}
    if not usable:
        return None
    if isinstance(key, bytes):
        for hs in usable:
            if len(key) < int(hs[2:]) // 8:
                raise ValueError(f"{where} is too short for {hs} (RFC 7518 §3.2)")
    return key, usable
