"""Secrets in Vault or OpenBao (KV v2, through hvac), and the ways to log in to it: a token,
AppRole or Kubernetes."""

from tai_common.vault.auth import (
    KUBERNETES_TOKEN_FILE,
    AppRoleAuth,
    CredentialFileError,
    KubernetesAuth,
    TokenAuth,
    TokenLease,
    VaultAuth,
)
from tai_common.vault.secrets import VaultConfig, VaultCredentials, VaultSecrets

__all__ = [
    "KUBERNETES_TOKEN_FILE",
    "AppRoleAuth",
    "CredentialFileError",
    "KubernetesAuth",
    "TokenAuth",
    "TokenLease",
    "VaultAuth",
    "VaultConfig",
    "VaultCredentials",
    "VaultSecrets",
]
