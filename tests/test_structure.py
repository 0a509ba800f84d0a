"""The shape of the code, checked: complete DVC code deps, layers that do not loop, one home for the
defaults (params.yaml mirrors config.py; profiles are deltas), lazy imports at the top of functions."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import yaml

from helpers import REPO
from seggen.config import EXTENDS, Params, _read_tree, flatten, load_params
from seggen.pipeline import codedeps


def test_dvc_code_deps_cover_every_module_a_stage_imports():
    for dvcfile in (REPO / "dvc.yaml", REPO / "ablation" / "dvc.yaml"):
        assert codedeps.check(dvcfile) == {}, dvcfile
        stages = yaml.safe_load(dvcfile.read_text())["stages"]
        for name, st in stages.items():  # every stage has its entry points (a new stage must add them)
            if not st.get("always_changed"):
                assert codedeps.required_files(name), name


def test_a_missing_code_dep_is_found(tmp_path):
    """Drop one module a stage imports from its deps: the check names the stage and the file."""
    text = (REPO / "dvc.yaml").read_text()
    assert "      - seggen/segmenter/model.py\n" in text
    dvcfile = tmp_path / "dvc.yaml"
    dvcfile.write_text(text.replace("      - seggen/segmenter/model.py\n", "", 1))
    missing = codedeps.check(dvcfile)
    assert any("seggen/segmenter/model.py" in files for files in missing.values())
    codedeps.write(dvcfile)  # the generator puts it back
    assert codedeps.check(dvcfile) == {}


def test_the_evaluate_stage_depends_on_the_model_and_data_readers():
    """The gaps of the hand-written deps: evaluate missed segmenter/model.py and segmenter/data.py;
    train_segmenter the training toolkit; most stages the params schema, codec.py and the data readers."""
    ev = codedeps.required_files("evaluate")
    assert {
        "seggen/segmenter/model.py",
        "seggen/segmenter/data.py",
        "seggen/config/schema.py",
        "seggen/codec.py",
        "seggen/data/ade20k.py",
    } <= set(ev)
    assert "seggen/training/__init__.py" in codedeps.required_files("train_segmenter")
    assert "seggen/pipeline/tracking.py" not in ev and "seggen/generators/diffusion.py" not in ev


def test_seggen_never_imports_flows():
    for f in (REPO / "seggen").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "flows" or n.startswith("flows.") for n in names), f


# the pipeline's plumbing: stages, MLflow, the checks around them (seggen.pipeline) and the CLI
PLUMBING = ("seggen.pipeline", "seggen.cli")
STAGE_PACKAGES = ("data", "generators", "synthesis", "segmenter", "metrics", "training", "config")


def test_stage_packages_never_import_the_plumbing():
    """Layering: the packages that hold stage code build on seggen's utilities and each other, never on
    the pipeline's plumbing (every package's __init__ says so), so a stage runs without MLflow or DVC."""
    bad = []
    for pkg in STAGE_PACKAGES:
        assert (REPO / "seggen" / pkg / "__init__.py").read_text().strip(), f"seggen/{pkg}: no docstring"
        for f in (REPO / "seggen" / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                bad += [f"{f.relative_to(REPO)}: {n}" for n in names if n.startswith(PLUMBING)]
    assert not bad, bad


def test_params_yaml_mirrors_the_code_defaults():
    """config.py is the one home of the defaults: params.yaml states them all, equal."""
    assert load_params(REPO / "params.yaml") == Params()
    assert set(flatten(Params().model_dump(mode="json"))) == set(
        flatten(load_params(REPO / "params.yaml").model_dump(mode="json"))
    )


def test_profiles_are_deltas():
    """ablation/, ci/ and profiles/ extend params.yaml and state only what differs from it."""
    base = flatten(_read_tree(REPO / "params.yaml"))
    for f in [
        REPO / "ablation" / "params.yaml",
        REPO / "ci" / "params.yaml",
        *sorted((REPO / "profiles").glob("*.yaml")),
    ]:
        raw = yaml.safe_load(f.read_text())
        assert raw.pop(EXTENDS) == "../params.yaml", f
        for key, value in flatten(raw).items():
            assert base.get(key, object()) != value or key in ("arms", "regimes"), (
                f"{f.name}: {key} repeats params.yaml"
            )
        load_params(f)  # and validates


def test_lazy_imports_sit_at_the_top_of_their_function():
    """Imports inside a function (heavy libraries, loaded only when used) come before its other
    statements; inside a block only where one branch needs an optional dependency (if / try)."""
    bad = []
    for f in sorted(
        [*(REPO / "seggen").rglob("*.py"), *(REPO / "flows").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    ):
        for fn in ast.walk(ast.parse(f.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            started = False
            for st in fn.body:
                if isinstance(st, (ast.Import, ast.ImportFrom)):
                    if started:
                        bad.append(f"{f.relative_to(REPO)}:{st.lineno}")
                elif not (isinstance(st, ast.Expr) and isinstance(getattr(st, "value", None), ast.Constant)):
                    started = True
                if isinstance(st, (ast.With, ast.For, ast.While)):
                    bad += [
                        f"{f.relative_to(REPO)}:{s.lineno}"
                        for s in ast.walk(st)
                        if isinstance(s, (ast.Import, ast.ImportFrom))
                    ]
    assert bad == []


def test_the_flows_read_their_stages_from_dvc_yaml(tmp_path):
    from flows.pipeline import SYNTHESIS, TRAIN_EVALUATE, stage_groups, stage_names

    groups = stage_groups(REPO / "dvc.yaml")
    assert all(groups.values()) and set(groups.values()) <= set(SYNTHESIS) | set(TRAIN_EVALUATE)
    synthesis = stage_names(REPO, SYNTHESIS)
    assert synthesis[0] == "check_models" and synthesis[-1] == "synthesize@imgsyn"
    assert stage_names(REPO, TRAIN_EVALUATE)[-1] == "report"
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")


def test_git_tracks_every_metric_and_plot_and_no_cached_output():
    """What `dvc exp` commits: every metric and plot (cache: false: the curves, summaries, scores,
    pictures) is visible to git; every cached output (models, datasets, predictions) is ignored, and so
    is every training's checkpoint directory, which is no DVC output at all (a missing one would make
    DVC retrain after `dvc pull` or `dvc exp apply`). Resolved by DVC itself (foreach / matrix / vars)."""
    import subprocess
    from pathlib import Path

    from dvc.repo import Repo

    tracked, ignored, checkpoints = set(), set(), set()
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                path = str(out.fs_path if hasattr(out, "fs_path") else out.def_path)
                rel = str(Path(path).resolve().relative_to(REPO))
                if out.use_cache or out.persist:
                    ignored.add(rel)
                elif out.metric or out.plot:
                    tracked.add(rel)
                if rel.endswith("/model"):  # the training writes its checkpoints beside its model
                    checkpoints.add(rel.removesuffix("/model") + "/checkpoints")
    assert "models/text2mask/train_summary.json" in tracked and "data/synthetic/masksyn.metrics.json" in tracked
    assert "models/segmenter/seggen/model" in ignored and "models/prior/checkpoints" in checkpoints
    assert not checkpoints & (ignored | tracked), sorted(checkpoints & (ignored | tracked))
    assert {"models/ablation/segmenter/full-both-s0/checkpoints", "models/mask2img-leak/checkpoints"} <= checkpoints
    ignored |= checkpoints
    paths = sorted(tracked | ignored)
    r = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        input="\n".join(p + "/x" if p in ignored else p for p in paths),
        capture_output=True,
        text=True,
    )
    hit = {ln.removesuffix("/x") for ln in r.stdout.split()}
    assert not tracked & hit, sorted(tracked & hit)  # a curve or score git would not commit
    # a model or checkpoint git would commit (elsewhere DVC writes each output's .gitignore entry when
    # the stage runs; under models/ the root .gitignore's exceptions for the curves decide)
    models = {p for p in ignored if p.startswith("models/")}
    assert models and models <= hit, sorted(models - hit)


def test_every_tracked_output_directory_carries_the_ownership_marker():
    """A fresh clone has the directories of the git-tracked curves and scores (models/ARM/...,
    reports/eval/...); seggen writes only into directories holding its `.seggen` marker, so each of
    them must carry a tracked one, or the first `make run` of a clone refuses to train there."""
    import subprocess
    from pathlib import Path

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    files = set(tracked)
    # directories of tracked outputs (a .gitignore alone, as DVC writes them, makes no such directory)
    dirs = {
        str(Path(f).parent)
        for f in tracked
        if f.startswith(("models/", "reports/eval/")) and not f.endswith((".gitignore", ".seggen"))
    }
    assert dirs, "no tracked output directories found"
    missing = sorted(d for d in dirs if f"{d}/.seggen" not in files)
    assert not missing, missing


def test_every_param_has_a_description_and_docs_params_md_is_current():
    """Descriptions are written once, on config.py's fields: the Prefect form, `seggen params
    describe` and docs/params.md all read them."""
    from seggen.pipeline import params_doc

    missing = [r.key for r in params_doc.rows() if not r.description]
    assert not missing, f"fields without a description (a docstring under the field): {missing}"
    assert (REPO / "docs" / "params.md").read_text() == params_doc.markdown(), (
        "docs/params.md is stale: seggen params describe --markdown > docs/params.md"
    )


def _commands(dvcfile) -> dict[str, str]:
    out = {}
    for name, st in yaml.safe_load(dvcfile.read_text())["stages"].items():
        out[name] = (st.get("do") or st)["cmd"]
    return out


def test_no_params_value_reaches_a_stage_command_line():
    """DVC interpolates `${...}` into the shell command line; the commands name their items as
    seggen templates instead ('{item.arm}'), so a value such as `a$(id)` is never executed."""
    for dvcfile in (REPO / "dvc.yaml", REPO / "ablation" / "dvc.yaml"):
        for name, cmd in _commands(dvcfile).items():
            assert "$" not in cmd and "`" not in cmd, f"{dvcfile.name}: {name}: {cmd}"
            for template in re.findall(r"\{[^}]*\}", cmd):  # every template is one single-quoted word
                assert re.search(r"'[^'\s]*" + re.escape(template) + r"[^'\s]*'", cmd), (name, cmd)


def test_stage_templates_fill_as_dvc_interpolates(tmp_path, monkeypatch):
    """The reference: DVC's own interpolation of the same commands written with `${...}`, for every
    stage DVC generates from both dvc.yaml files with the shipped params and two rounds of the closed
    loop (DVC started in the project root, and in ablation/: DVC_STAGE's path part differs, the stage
    found does not)."""
    from dvc.repo import Repo

    from seggen.pipeline import dvcstage

    work = tmp_path / "project"
    (work / "ablation").mkdir(parents=True)
    for rel in ("params.yaml", "dvc.yaml", "ablation/params.yaml", "ablation/dvc.yaml"):
        text = (REPO / rel).read_text()
        if rel.endswith("dvc.yaml"):  # the same commands in DVC's own syntax
            text = re.sub(r"'([^'\n]*)'", lambda m: re.sub(r"\{((?:key|item)[\w.]*)\}", r"${\1}", m.group(1)), text)
        (work / rel).write_text(text)
    loop = "  rounds: {}  "
    assert loop in (work / "params.yaml").read_text()  # the shipped params run no loop: two rounds here
    text = (work / "params.yaml").read_text().replace(loop, "  rounds: {r1: {after: baseline}, r2: {after: r1}}  ")
    (work / "params.yaml").write_text(text)
    Repo.init(str(work), no_scm=True)
    params = {"dvc.yaml": work / "params.yaml", "ablation/dvc.yaml": work / "ablation" / "params.yaml"}
    trees = {f: load_params(p).model_dump(mode="json") for f, p in params.items()}
    for start in (work, work / "ablation"):
        monkeypatch.chdir(start)  # DVC_STAGE is the addressing relative to where DVC runs
        stages = [s for s in Repo(str(work)).index.stages if "@" in s.addressing]
        assert len(stages) > 40  # arms x splits, regimes x strategies, the ablation's arms
        for st in stages:
            rel = Path(st.path).relative_to(work).as_posix()
            template = _commands(REPO / rel)[st.name.partition("@")[0]]
            monkeypatch.setenv("DVC_STAGE", st.addressing)

            def fill(m, rel=rel):
                return dvcstage.expand(m.group(1), "--opt", trees[rel], REPO / rel)

            got = re.sub(r"'([^'\s]*\{[^'\s]*)'", fill, template)
            assert " ".join(got.split()) == " ".join(st.cmd.split()), st.addressing


def test_cached_outputs_stay_ignored_without_dvcs_gitignore_entries(tmp_path):
    """A failed `dvc repro` deletes the entries DVC wrote into the .gitignore files beside its outputs:
    the root .gitignore alone must still ignore every cached output of both pipelines (so `git add -A`
    never adds a dataset), and must not ignore the git-tracked metrics and plots (cache: false)."""
    import subprocess

    from dvc.repo import Repo

    cached, tracked = set(), set()
    for st in Repo(str(REPO)).index.stages:
        for out in st.outs:
            rel = Path(out.fs_path).relative_to(REPO).as_posix()
            (cached if out.use_cache else tracked).add(rel)
    in_git = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    tracked &= in_git  # cache: false outputs that git keeps (metrics, plots; not the pre-flight notes)
    assert {"data/benchmark", "data/synthetic/masksyn", "models/segmenter/baseline/model"} <= cached
    assert "data/synthetic/masksyn.metrics.json" in tracked
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")  # and no other .gitignore
    paths = sorted(cached | tracked)
    for rel in paths:  # each output as a file inside a folder of its name (a directory output)
        f = tmp_path / rel / "part.bin" if rel in cached else tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    probe = [f"{rel}/part.bin" if rel in cached else rel for rel in paths]
    r = subprocess.run(
        ["git", "check-ignore", "--stdin", "-n", "-v"],
        cwd=tmp_path,
        input="\n".join(probe),
        capture_output=True,
        text=True,
    )
    # -v -n: "SOURCE:LINE:PATTERN<TAB>PATH", "::<TAB>PATH" when no pattern matches; a "!" pattern re-includes
    matches = [line.split("\t") for line in r.stdout.splitlines()]
    ignored = {path for where, path in matches if where != "::" and not where.split(":", 2)[2].startswith("!")}
    assert {f"{rel}/part.bin" for rel in cached} <= ignored, sorted({f"{r}/part.bin" for r in cached} - ignored)
    assert not (tracked & ignored), sorted(tracked & ignored)


def test_no_module_over_500_lines():
    """Small modules named for what they hold; a generated data table (ADE20K's class list) is the exception."""
    tables = {"seggen/data/ade20k_meta.py"}
    long = [
        f"{f.relative_to(REPO)}: {n}"
        for f in sorted(
            [*(REPO / "seggen").rglob("*.py"), *(REPO / "flows").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
        )
        if (n := len(f.read_text().splitlines())) > 500 and str(f.relative_to(REPO)) not in tables
    ]
    assert not long, long
