"""Tokens the gateway mints for what sits behind it: an identity assertion for the backend, and
audience-bound tokens for each tool server (`[tokens]`, docs/tokens.md)."""
