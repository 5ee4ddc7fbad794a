"""Failures, and the exit code each one means (documented in README.md)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNDO_INCOMPLETE = 3
# A dry run that printed a valid plan, on a machine that lacks what a real
# run needs to start (an SSH key, the VPN file, a secret): a laptop's preview
# must not pass for a green check that the CI agent could deploy.
EXIT_DRY_RUN_LACKS = 4
# Done on every host but some that failed within the target's max_failed: the
# run went on without those, undid what it had changed there, and names them.
EXIT_PARTLY_DONE = 5
EXIT_INTERRUPTED = 130


class DeployError(Exception):
    """Anything deployer reports to the user as a one-line reason."""

    exit_code = EXIT_FAILED


class UsageError(DeployError):
    """Bad arguments, config or input: raised before any side effect."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """targets.yaml is wrong; the message names the file and key path."""

    def __init__(self, source: str, path: str, problem: str):
        self.source, self.path, self.problem = source, path, problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class TemplateError(UsageError):
    """The vhost template cannot be rendered strictly."""


class DryRunLacks(DeployError):
    """A dry run printed the plan; a real run on this machine could not start."""

    exit_code = EXIT_DRY_RUN_LACKS


class StepFailed(DeployError):
    """A step failed on one or more hosts while the plan was running."""


class PartlyDone(DeployError):
    """The run succeeded on every host but those that failed within
    max_failed, where it undid what it had changed: the message names them."""

    exit_code = EXIT_PARTLY_DONE


class UndoIncomplete(DeployError):
    """A run failed and its undo did not complete: the message names the hosts."""

    exit_code = EXIT_UNDO_INCOMPLETE


class StoreError(DeployError):
    """An artifact store (S3) could not be used: the message names the store
    and what it answered, never a credential, a signature or a presigned URL."""
