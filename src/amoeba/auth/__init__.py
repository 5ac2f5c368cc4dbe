"""Authentication: who a request is from.

    principal.py  Principal: the verified identity a method parameter receives
    keys.py       the signing/verifying key set (file format, generation, rotation)
    tokens.py     access tokens (JWT): TokenVerifier for the edge, the Tokens resource
    passwords.py  argon2id password hashing off the event loop, a few at a time
    revocation.py ended sessions, whose access tokens the edge refuses
"""

from amoeba.auth.principal import Principal
from amoeba.auth.tokens import AuthConfig, Tokens, TokenVerifier

__all__ = ["AuthConfig", "Principal", "TokenVerifier", "Tokens"]
