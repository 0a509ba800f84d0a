"""The README and docs/*.md say what the code does: every `seggen`, `make` and `dvc repro` line of their
shell snippets resolves against the real CLI parser, Makefile and dvc.yaml; every console transcript
(`$ seggen ...` and its output) runs and prints what it shows; the README's results table is the one
the report stage writes; `dvc plots` pages need no network; the pages speak to users, not of how the
project was built. The Python snippets run verbatim in the tiny pipeline's project
(tests/test_pipeline.py::test_doc_python_snippets_run_verbatim)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.exceptions import TyperException

from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(lang: str) -> list[tuple[Path, str]]:
    """(page, text) of every fenced block of `lang` ('' for an unlabelled block)."""
    found = []
    for page in PAGES:
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", page.read_text(), re.S | re.M):
            if m.group(1) == lang:
                found.append((page, m.group(2)))
    return found


def commands(text: str) -> list[list[str]]:
    """The commands of a shell snippet: continuation lines joined, comments dropped, split at && ; |."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote inside a comment or a JSON argument
            tokens = shlex.split(line.split(" #")[0], comments=True)
        cmd: list[str] = []
        for t in tokens + [";"]:
            if t in ("&&", ";", "|", "||"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(t)
    return out


def seggen_args(cmd: list[str]) -> list[str] | None:
    """The arguments of a `seggen` invocation (`seggen`, `.venv/bin/seggen`, `python -m seggen.cli`,
    `accelerate launch -m seggen.cli`), environment assignments before it skipped; else None."""
    while cmd and re.fullmatch(r"[A-Z_]+=.*", cmd[0]):
        cmd = cmd[1:]
    if cmd and cmd[0].endswith("seggen"):
        return cmd[1:]
    if "-m" in cmd and cmd[cmd.index("-m") + 1 : cmd.index("-m") + 2] == ["seggen.cli"]:
        return cmd[cmd.index("-m") + 2 :]
    return None


def parse(args: list[str]):
    """Resolve a seggen command line with the CLI's own parser, options and types included, without
    running it: the click context of the innermost command."""
    import typer

    from seggen import cli

    cli._plugins()
    cmd, name, parent = typer.main.get_command(cli.app), "seggen", None
    while True:
        ctx = cmd.make_context(name, list(args), parent=parent)
        if not hasattr(cmd, "resolve_command"):
            return ctx
        rest = [*ctx._protected_args, *ctx.args]
        name, cmd, args = cmd.resolve_command(ctx, rest)
        parent = ctx


def test_every_seggen_make_and_dvc_line_of_the_docs_resolves():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    names = []
    for target in ("dvc.yaml", "ablation/dvc.yaml"):  # the ablation's stages are named ablation/dvc.yaml:NAME
        r = subprocess.run(
            [str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only", target],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        names += r.stdout.split()
    stages = set(names) | {s.split("@")[0] for s in names}
    checked = {"seggen": 0, "make": 0, "dvc": 0}
    for page, text in blocks("bash"):
        for cmd in commands(text):
            where = f"{page.relative_to(REPO)}: {shlex.join(cmd)}"
            args = seggen_args(cmd)
            if args is not None:
                parse(args)  # raises with the click error on an unknown command, option or value
                checked["seggen"] += 1
            elif cmd[0] == "make":
                named = [t for t in cmd[1:] if not t.startswith("-") and "=" not in t]
                assert set(named) <= targets, f"{where}: no Makefile target {set(named) - targets}"
                checked["make"] += 1
            elif cmd[:2] == ["dvc", "repro"]:
                named = [t for t in cmd[2:] if not t.startswith("-") and not t.endswith(".yaml")]
                assert set(named) <= stages, f"{where}: no dvc.yaml stage {set(named) - stages}"
                checked["dvc"] += 1
    assert min(checked.values()) > 0 and checked["seggen"] >= 30, checked


def test_a_renamed_or_unknown_command_fails_the_check():
    """What the check above catches: a command or option that the CLI does not have."""
    parse(["train_segmenter", "--arm", "seggen"])
    for bad in (["train", "segmenter"], ["train_segmenter", "--arms", "x"], ["eval", "semantic", "--num-classes", "x"]):
        with pytest.raises(TyperException):  # what `seggen` turns into its one-line usage error
            parse(bad)


def test_console_transcripts_print_what_they_show(tmp_path):
    """An unlabelled block starting `$ seggen ...`: the command runs and prints the lines shown."""
    ran = 0
    for page, text in blocks(""):
        lines = text.splitlines()
        if not lines or not lines[0].startswith("$ seggen "):
            continue
        args = shlex.split(lines[0][2:])[1:]
        r = subprocess.run(
            [str(Path(sys.executable).parent / "seggen"), *args], cwd=REPO, capture_output=True, text=True
        )
        shown = [ln for ln in lines[1:] if ln.strip()]
        printed = (r.stdout + r.stderr).splitlines()
        assert shown == printed[-len(shown) :], f"{page.name}: {lines[0]} printed {printed}"
        ran += 1
    assert ran >= 1


def test_the_readme_table_is_the_one_the_report_writes():
    from seggen.reporting.report import README_END, README_START, readme_block

    readme = (REPO / "README.md").read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    summary = json.loads((REPO / "reports" / "summary.json").read_text())
    assert block == readme_block(summary).strip()


def test_dvc_plots_pages_render_without_a_network(tmp_path):
    """The project's plots template (.dvc/config plots.html_template) inlines vega, vega-lite and
    vega-embed: a `dvc plots show` page loads no script from anywhere."""
    template = REPO / ".dvc" / "plots.html"
    assert "html_template = plots.html" in (REPO / ".dvc" / "config").read_text()
    text = template.read_text()
    assert "{plot_divs}" in text and "{scripts}" not in text
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert all(f"{name}@" not in text for name in ("vega", "vega-lite", "vega-embed"))  # no CDN URL
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "loss.json").write_text(json.dumps([{"step": i, "loss": 1 / (i + 1)} for i in range(5)]))
    subprocess.run([dvc, "config", "plots.html_template", str(template)], cwd=tmp_path, check=True)
    subprocess.run([dvc, "plots", "show", "loss.json", "-o", "out"], cwd=tmp_path, check=True, capture_output=True)
    page = (tmp_path / "out" / "index.html").read_text()
    assert "vegaEmbed" in page and "loss" in page and not re.search(r"<script[^>]*\bsrc=", page)


def test_the_pages_speak_to_users():
    """No work-item numbers or work-log language in what users read, run or import."""
    pattern = r"\b([Ii]ssues? #?[0-9]+|[Ss]tops? [0-9]+)"  # numbered work items
    r = subprocess.run(
        [
            "git",
            "grep",
            "-n",
            "-E",
            pattern,
            "--",
            "README.md",
            "docs",
            "seggen",
            "flows",
            "benchmarks",
            "tests",
            "Makefile",
            "params.yaml",
            "profiles",
            "ablation",
            "ci",
            "dvc.yaml",
            ":!tests/test_docs.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.stdout == "", r.stdout[:3000]
    r = subprocess.run(
        ["git", "grep", "-n", "shared/", "--", "seggen", "params.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert r.stdout == "", r.stdout
