"""The `tfdiffusion` command: train, sample and evaluate diffusion models from the shell."""

import argparse
import os
import re
import sys
import tempfile
import traceback

from tfdiffusion import compilation_cache
from tfdiffusion.cli import commands
from tfdiffusion.cli.parser import PROG
from tfdiffusion.cli.parser import CLIError
from tfdiffusion.cli.parser import build_parser
from tfdiffusion.training import RunError

__all__ = ["CLIError", "build_parser", "main"]

_HANDLERS = {"train": commands.train, "sample": commands.sample, "evaluate": commands.evaluate,
             "convert": commands.convert, "export": commands.export}


def _one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


def _with_flags(message, parser, argv):
    """Names arguments as the command line spells them: `output_dir` -> --output-dir."""
    flags = {o for a in parser._actions for o in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and argv and argv[0] in action.choices:
            flags |= {o for a in action.choices[argv[0]]._actions for o in a.option_strings}

    def replace(match):
        flag = "--" + match.group(1).replace("_", "-")
        return flag if flag in flags else match.group(0)

    return re.sub(r"`([a-z][a-z0-9_]*)`", replace, message)


def _use_compilation_cache(args):
    """XLA's persistent cache for the commands that compile, unless --no-compilation-cache.

    A folder given with --compilation-cache must work (its error is the
    command's); the default one is skipped with a note when it cannot be
    used (e.g. a read-only home).
    """
    if not hasattr(args, "no_compilation_cache") or args.no_compilation_cache:
        return
    if args.compilation_cache is not None:
        commands.check_output_apart(args.compilation_cache, "compilation_cache", args)
        try:
            compilation_cache.enable_compilation_cache(args.compilation_cache, lowered_steps=True)
        except (ValueError, TypeError) as error:  # its argument is `directory`: name the flag
            raise CLIError(_one_line(error).replace("the compilation cache `directory`", "--compilation-cache")
                           .replace("`directory`", "--compilation-cache")) from None
        return
    try:
        compilation_cache.enable_compilation_cache(lowered_steps=True)
    except ValueError as error:
        print(f"{PROG}: note: XLA compilation cache off ({_one_line(error)})", file=sys.stderr)


def main(argv=None) -> int:
    """Runs the `tfdiffusion` command.

    Args:
        argv: the arguments after the program name; None for `sys.argv[1:]`.

    Returns:
        The exit code: 0 on success, 2 for a usage error (reported on stderr
        as one `tfdiffusion: error: ...` line), 1 for an unexpected error
        (one line naming the log file that holds the traceback; `--debug`
        prints it instead), 130 when interrupted.
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        args = parser.parse_args(argv)
        _use_compilation_cache(args)
        return _HANDLERS[args.command_name](args)
    except (CLIError, RunError, ValueError, TypeError) as error:
        # Library functions check their arguments and raise these with a clear message.
        if debug:
            raise
        print(f"{PROG}: error: {_with_flags(_one_line(error), parser, argv)}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # A bug or an environment problem: the traceback goes to a log.
        if debug:
            raise
        log = os.path.join(tempfile.gettempdir(), f"{PROG}-error-{os.getpid()}.log")
        with open(log, "w") as file:
            file.write(f"{PROG} {' '.join(argv)}\n\n{traceback.format_exc()}")
        print(f"{PROG}: unexpected error: {type(error).__name__}: {_one_line(error)[:300]}; the traceback is "
              f"in {log} (--debug prints it)", file=sys.stderr)
        return 1
