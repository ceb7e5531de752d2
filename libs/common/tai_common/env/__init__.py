"""Secrets from mounted files and environment variables (the embedded default)."""

from tai_common.env.secrets import ENV_PREFIX, EnvSecrets, env_prefix

__all__ = ["ENV_PREFIX", "EnvSecrets", "env_prefix"]
