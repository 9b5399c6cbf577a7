#!/usr/bin/env python3
"""Prints the payload of the JWT on stdin as indented JSON. It decodes, it does not verify: the demo
only shows what the upstream was given (the upstream itself would verify it against the token
service's JWKS). Standard library only."""

import base64
import json
import sys

token = sys.stdin.read().strip()
parts = token.split(".")
if len(parts) != 3:
    sys.exit("jwt_payload.py: stdin is not a JWT (header.payload.signature)")
payload = parts[1] + "=" * (-len(parts[1]) % 4)  # base64url without its padding
print(json.dumps(json.loads(base64.urlsafe_b64decode(payload)), indent=2))
