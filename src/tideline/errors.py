"""One small error hierarchy. Messages are written for the user; the CLI prints them on one line."""

from __future__ import annotations


class TidelineError(Exception):
    """Base of every error tideline raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, plus an optional hint
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(TidelineError):
    """Bad settings, arguments or options."""

    exit_code = 2


class DataError(TidelineError):
    """Input market data that cannot be read or used."""

    exit_code = 3


class ValidationError(DataError):
    """Market data failed validation. ``report`` says which rows and why."""

    def __init__(self, message: str, report: object | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class ModelError(TidelineError):
    """A model could not be trained, saved, loaded or used."""

    exit_code = 4


class RegistryError(TidelineError):
    """Registry failures."""

    exit_code = 5


class VersionNotFound(RegistryError):
    """No model version (or alias) by that name, or it was deleted."""
    exit_code = 6


class AliasConflict(RegistryError):
    """A compare-and-swap on a shared document (registry state, a rollout, a lock) kept losing to other writers."""

    exit_code = 7


class IntegrityError(RegistryError):
    """An artifact's sha256 does not match its manifest: the artifact is refused."""

    exit_code = 8


class StorageUnavailable(RegistryError):
    """The store (S3/MinIO or a directory) cannot be reached."""

    exit_code = 9


class PolicyError(TidelineError):
    """A promotion or rollback is not allowed."""

    exit_code = 10


class PipelineFailed(TidelineError):
    """A pipeline task failed for a reason that is not one of tideline's own errors."""

    exit_code = 70


class PipelinesUnavailable(TidelineError):
    """The Kubeflow Pipelines API cannot be reached, or refused the request."""

    exit_code = 9


class RunInProgress(TidelineError):
    """A retraining run is already in progress; a second one is not started."""

    exit_code = 11
