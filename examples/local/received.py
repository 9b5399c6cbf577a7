#!/usr/bin/env python3
"""What the upstream received, from the echo upstream's answer (examples/demo/echo.py) on stdin:

    curl -sS -x http://127.0.0.1:18420 -H "Authorization: Bearer $USER_TOKEN" http://localhost:18430/orders/42 \
      | python3 examples/local/received.py

It prints whether an Authorization header arrived and, for a bearer JWT, the token's claims (decoded,
not verified: the upstream itself would verify them against the token service's /jwks). A token is
shown only as a sha256 fingerprint, never in full. Any other answer (Envoy's or Baton's refusal) is
printed as it came, and the exit status is 1. Standard library only."""

import base64
import hashlib
import json
import sys

text = sys.stdin.read()
try:
    echoed = json.loads(text)
    headers = echoed["headers"]
except (ValueError, KeyError, TypeError):
    print(f"not the echo upstream's answer (a refusal?): {text.strip()[:500]}")
    sys.exit(1)

authorization = headers.get("authorization")
if authorization is None:
    print(f"the upstream ({headers.get('host')}) received no Authorization header")
    sys.exit(0)
scheme, _, token = authorization.partition(" ")
fingerprint = "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]
print(f"the upstream ({headers.get('host')}) received Authorization: {scheme} {fingerprint}")
parts = token.split(".")
if scheme.lower() != "bearer" or len(parts) != 3:
    print("(not a bearer JWT)")
    sys.exit(0)
try:
    payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
    claims = json.loads(payload)
except ValueError:
    print("(its payload is not JSON)")
    sys.exit(0)
print("its claims (decoded, not verified):")
print(json.dumps(claims, indent=2))
