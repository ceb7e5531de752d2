"""Signing keys and JWTs for the authentication tests (PyJWT + cryptography): an RSA and an EC
key, their JWKS, and tokens with whatever claims a test needs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://issuer.tai.test"
AUDIENCE = "tai"


@dataclass
class TokenIssuer:
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    rsa_kid: str = "rsa-1"
    ec_kid: str = "ec-1"

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key, alg in (
            (self.rsa_kid, self.rsa_key, "RS256"),
            (self.ec_kid, self.ec_key, "ES256"),
        ):
            algorithm = (
                jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
            )
            public = json.loads(algorithm.to_jwk(key.public_key()))
            keys.append({**public, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": keys}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(
        self,
        subject: str = "alice",
        roles: list[str] | None = None,
        *,
        audience: str = AUDIENCE,
        issuer: str = ISSUER,
        expires_in: float = 300,
        not_before_in: float = 0,
        algorithm: str = "RS256",
        kid: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = time.time()
        claims: dict[str, Any] = {
            "sub": subject,
            "iss": issuer,
            "aud": audience,
            "iat": int(now),
            "nbf": int(now + not_before_in),
            "exp": int(now + expires_in),
            "roles": roles if roles is not None else [],
            **(extra or {}),
        }
        key = self.rsa_key if algorithm == "RS256" else self.ec_key
        default_kid = self.rsa_kid if algorithm == "RS256" else self.ec_kid
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid or default_kid})
