"""Shared security kernel: signing keys, JWT issue/verify, the authenticated principal and guards.

Users signs tokens with the private key; every other process verifies them with the public key,
with the algorithm pinned and exp/iss/aud checked.
"""
