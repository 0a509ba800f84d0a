"""The `seggen` command. Every subcommand reads params.yaml through seggen.config; flags override it.

Errors that users can fix (bad params, data, options or output locations, a full disk) print one line
`error: ...` naming the file, key or option, and exit 2; `--debug` adds the traceback. Anything else is
a bug: one line and exit 1 (the traceback with `--debug`).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from seggen.config import DEFAULT_PARAMS, Params, load_params, parse_overrides
from seggen.errors import ConfigError, SeggenError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="SegGen pipeline: data, generators (Text2Mask, Mask2Img), synthesis, Mask2Former, evaluation.",
)


def _plugins() -> None:
    """Commands of packages layered on seggen (the Prefect flows' `serve` and `deploy`), registered
    through the `seggen.cli` entry point group: seggen itself never imports them."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="seggen.cli"):
        ep.load()(app)


class _State:
    params_path: Path = DEFAULT_PARAMS
    overrides: list[str] = []

    def params(self, extra: dict | None = None) -> Params:
        ov = parse_overrides(self.overrides)
        ov.update({k: v for k, v in (extra or {}).items() if v is not None})
        return load_params(self.params_path, ov)

    def value(self, value: str | None, option: str) -> str | None:
        """An option's value; a template such as '{item.arm}' (what dvc.yaml passes) filled from the DVC
        stage this command runs as (seggen.pipeline.dvcstage), so that no params value passes through a shell."""
        from seggen.pipeline import dvcstage

        if not dvcstage.is_template(value):
            return value
        tree = load_params(self.params_path, parse_overrides(self.overrides)).model_dump(mode="json")
        return dvcstage.expand(value, option, tree, self.params_path.parent / "dvc.yaml")


state = _State()


@app.callback()
def _root(
    params: Annotated[Path, typer.Option("--params", "-p", help="Parameter file.")] = DEFAULT_PARAMS,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a parameter: KEY=VALUE (dotted key; `seggen params describe` lists the keys)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="No MLflow tracking for this command (same as SEGGEN_TRACKING=off).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of an error.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # per-request and per-worker chatter of the Prefect client and Dask
        for name in ("httpx", "distributed", "prefect.client"):
            logging.getLogger(name).setLevel(logging.WARNING)
    state.params_path = params
    state.overrides = list(set_ or [])
    if offline:
        import os

        from seggen.pipeline.tracking import TRACKING_ENV

        os.environ[TRACKING_ENV] = "off"


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"{option} {value}: must be at least 1")
    return value


def _write_or_print(result: dict, out: Path | None) -> None:
    from seggen.io import write_json

    text = json.dumps(result, indent=2)
    if out:
        write_json(out, result)
        typer.echo(f"wrote {out}", err=True)
    summary = {k: v for k, v in result.items() if not isinstance(v, dict)}
    typer.echo(json.dumps(summary, indent=2) if out else text)


_USER_ERRNOS = {
    "ENOSPC",
    "EDQUOT",
    "EACCES",
    "EPERM",
    "EROFS",
    "ENOENT",
    "ENOTDIR",
    "EISDIR",
    "ENAMETOOLONG",
    "EFBIG",
    "EMFILE",
    "ELOOP",
}


def _fail(message: str, code: int, debug: bool) -> None:
    """Print `error: message` on its own line (after any progress bar) and exit."""
    import traceback

    from tqdm import tqdm as _tqdm

    for bar in list(getattr(_tqdm, "_instances", [])):  # end open bars' lines: the error starts a line of its own
        try:
            bar.close()
        except Exception:
            pass
    if debug:
        traceback.print_exc()
    sys.stderr.flush()
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def main() -> None:
    import errno

    from typer.exceptions import TyperException

    _plugins()

    debug = "--debug" in sys.argv[1:]
    try:
        rc = typer.main.get_command(app).main(args=sys.argv[1:], prog_name="seggen", standalone_mode=False)
    except TyperException as e:  # typer's click: a bad option or value -> one line, with where to look
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `seggen data` alone: its help
            typer.echo(ctx.get_help())
            sys.exit(0)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(e.format_message() + where, e.exit_code, debug)
    except typer.Abort:
        _fail("aborted", 1, debug)
    except SeggenError as e:
        _fail(str(e), 2, debug)
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, "")
        if name not in _USER_ERRNOS:
            _fail(
                f"unexpected {type(e).__name__}: {e} (a bug in seggen? re-run with --debug for the traceback)", 1, debug
            )
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
        _fail(f"{where + ': ' if where else ''}{e.strerror or e}", 2, debug)
    except KeyboardInterrupt:
        _fail("interrupted", 130, debug)
    except MemoryError:
        _fail("out of memory (host RAM): lower the batch size, resolution or class count, or free memory", 2, debug)
    except Exception as e:
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text:
            # a full disk raised as another library's error (safetensors' SafetensorError, ...)
            _fail(f"the disk is full: No space left on device ({type(e).__name__} while writing)", 2, debug)
        _fail(f"unexpected {type(e).__name__}: {e} (a bug in seggen? re-run with --debug for the traceback)", 1, debug)
    sys.exit(rc if isinstance(rc, int) else 0)


# the commands register on `app` when their modules load
from seggen.cli import pipeline, tools  # noqa: E402, F401
