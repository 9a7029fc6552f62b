"""The values every layer passes around: verified claims stay as verified, all the way down."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from jwt_audit_middleware import Settings
from jwt_audit_middleware.model import ClaimList, Claims
from jwt_audit_middleware.policy import Gate
from jwt_audit_middleware.testing import SigningKey

NESTED = {"sub": "a", "roles": ["reader"], "org": {"teams": ["x", {"y": [1]}]}}


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["roles"].append("admin"),
        lambda c: c["roles"].extend(["admin"]),
        lambda c: c["roles"].__setitem__(0, "admin"),
        lambda c: c["roles"].__iadd__(["admin"]),
        lambda c: c["org"].__setitem__("owner", "me"),
        lambda c: c["org"]["teams"].pop(),
        lambda c: c["org"]["teams"][1]["y"].append(2),
        lambda c: c["org"]["teams"][1].update(z=1),
    ],
)
def test_nested_claims_are_read_only(change: Callable[[Claims], object]) -> None:
    claims = Claims(NESTED)
    with pytest.raises(TypeError, match="read-only"):
        change(claims)
    assert claims == NESTED


def test_read_only_claims_serialise_and_copy_like_plain_json() -> None:
    claims = Claims(NESTED)
    assert json.loads(json.dumps(claims)) == NESTED
    assert orjson.loads(orjson.dumps(claims)) == NESTED
    assert pickle.loads(pickle.dumps(claims)) == NESTED
    assert copy.deepcopy(claims) is claims
    assert isinstance(claims["roles"], list)  # still a list for isinstance checks
    assert type(claims["roles"]) is ClaimList
    assert [*claims["roles"], "mine"] == ["reader", "mine"]  # copies are the app's


def test_a_cached_tokens_nested_claims_cannot_be_changed_by_a_view(rsa_key: SigningKey) -> None:
    # found in review: claims["roles"].append("admin") changed what every later request saw
    gate = Gate(Settings(**rsa_key.options()))
    headers = [f"Bearer {rsa_key.token(roles=['reader'])}"]
    first = gate.decide_sync("/", headers)
    assert first.token is not None
    roles: Any = first.token.claims["roles"]
    with pytest.raises(TypeError):
        roles.append("admin")
    again = gate.decide_sync("/", headers)
    assert again.token is not None
    assert again.token.claims["roles"] == ["reader"]
