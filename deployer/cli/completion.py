"""Shell completion for `deploy` and `deployer`, in bash and zsh, by
argcomplete: the shell runs the command itself to ask what may come next,
so options and subcommands come from the same argparse parsers as --help,
and config names from the targets file on the command line (else
./targets.yaml).

    eval "$(deployer completion bash)"    # in ~/.bashrc
    eval "$(deployer completion zsh)"     # in ~/.zshrc
"""

import os


def config_names(prefix: str, parsed_args, **_) -> list[str]:
    """The targets file's config names (not the catch-all) that start with
    `prefix`. Its keys only, not the whole check of config.load: a TAB must
    answer at once."""
    import yaml

    try:
        with open(getattr(parsed_args, "targets", None) or "targets.yaml", encoding="utf-8") as f:
            entries = (yaml.safe_load(f) or {}).get("targets") or {}
        found = [str(n) for n in entries]
    except Exception:  # noqa: BLE001 - a broken or missing file completes nothing, and never breaks the shell
        return []
    return sorted(n for n in found if n != "*" and n.startswith(prefix))


def names(action):
    """Mark an argparse argument as a config name, for completion."""
    action.completer = config_names
    return action


def answer(parser) -> None:
    """If the shell is asking for completions, answer and exit; else return
    at once (without importing argcomplete)."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)


def script(shell: str) -> str:
    """What `eval` in the shell's rc file needs, for both commands."""
    import argcomplete

    return argcomplete.shellcode(["deploy", "deployer"], shell=shell)
