"""Session lifetime and revocation: streams that end with their session, a revocation list
(memory or Redis), its admin API, and OIDC Back-Channel Logout. See docs/revocation.md."""
