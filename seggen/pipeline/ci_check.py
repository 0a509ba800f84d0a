"""`seggen ci-check`: the regression gate. The pipeline of dvc.yaml -- the same stages, in the same
order, through `dvc repro` -- runs on a small fixed-seed profile (ci/params.yaml, a delta on
params.yaml) in a scratch project; each arm's mIoU on each split must stay within `tolerance` of the
committed ci/baseline.json. Scores above the band pass with a note to raise the baseline.

`--against champion` (any registry alias) gates this project's own evaluations instead: the scores
the pipeline wrote for the alias's arm (`evaluate.out/ARM/SPLIT/scores.json`, e.g. after `dvc repro`
on a pull request) against what that registered segmenter version scored when its evaluate stage
ran (the metrics on its MLflow LoggedModel), on every split both have.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from seggen.config import load_params
from seggen.errors import ConfigError, SeggenError, not_found
from seggen.io import claim, write_json

DEFAULT_TOLERANCE = 3.0  # mIoU points: float differences between CPUs move a 200-step run by ~1


class Regression(SeggenError):
    pass


def run_small_pipeline(params_path: Path, workdir: Path, project: Path = Path(".")) -> dict[str, dict[str, float]]:
    """`dvc repro` of `project`'s dvc.yaml in `workdir`, with the profile's params resolved into its
    params.yaml and the code the stages depend on copied beside it; no MLflow tracking. Returns
    {arm: {split: mIoU}} from the evaluations' scores.json (and SPLIT.domain_mean: the mean over a
    split's drawn domains)."""
    import shutil
    import subprocess
    import sys

    import yaml

    from seggen.reporting.scores import gate_scores

    p = load_params(params_path)
    project = project.resolve()
    if not (project / "dvc.yaml").is_file():
        raise ConfigError(not_found(project / "dvc.yaml", "file", "pipeline") + " (run ci-check in the project)")
    claim(workdir, "--workdir", "ci-check")  # a folder of the user's is refused, never overwritten
    shutil.copy(project / "dvc.yaml", workdir / "dvc.yaml")
    for extra in (".dvcignore",):
        if (project / extra).exists():
            shutil.copy(project / extra, workdir / extra)
    shutil.rmtree(workdir / "seggen", ignore_errors=True)
    shutil.copytree(project / "seggen", workdir / "seggen", ignore=shutil.ignore_patterns("__pycache__"))
    (workdir / "params.yaml").write_text(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "SEGGEN_TRACKING": "off"}
    dvc = str(Path(bin_dir) / "dvc") if (Path(bin_dir) / "dvc").exists() else "dvc"
    if not (workdir / ".dvc").is_dir():
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=workdir, env=env, check=True)
    log = workdir / "repro.log"
    t0 = time.perf_counter()
    with log.open("w") as out:  # everything to the log; each stage's start, with the time so far, to stderr
        proc = subprocess.Popen(
            [dvc, "repro"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            out.write(line)
            if line.startswith(("Running stage ", "Stage '")):
                m, sec = divmod(int(time.perf_counter() - t0), 60)
                print(f"ci-check [{m:02d}:{sec:02d}] {line.strip()}", file=sys.stderr, flush=True)
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SeggenError(f"the CI pipeline failed (dvc repro exit {code}; {log}):\n{tail}")
    scores: dict[str, dict[str, float]] = {}
    for arm in p.arms:
        for split in p.evaluate.splits:
            s = json.loads((workdir / p.evaluate.out / arm / split / "scores.json").read_text())
            scores.setdefault(arm, {}).update(gate_scores(s, split))
    return scores


def compare(
    scores: dict,
    baseline: dict,
    tolerance: float,
    ref_name: str = "baseline",
    better: str = "raise the baseline: seggen ci-check --update",
) -> tuple[list[str], list[str]]:
    """(lines of the report, regressions); `ref_name` names the reference in them."""
    lines, bad = [], []
    width = max([18] + [len(k) for splits in baseline["mIoU"].values() for k in splits])
    for arm, splits in baseline["mIoU"].items():
        for split, want in splits.items():
            got = scores.get(arm, {}).get(split)
            if got is None:
                bad.append(f"{arm}/{split}: no score (arm or split missing from the run)")
                continue
            verdict = "ok"
            if got < want - tolerance:
                verdict = "REGRESSION"
                bad.append(f"{arm}/{split}: mIoU {got:.2f} < {ref_name} {want:.2f} - tolerance {tolerance:g}")
            elif got > want + tolerance:
                verdict = f"better ({better})"
            lines.append(
                f"{arm:>10} {split:<{width}} mIoU {got:6.2f}  {ref_name} {want:6.2f}  {got - want:+6.2f}  {verdict}"
            )
    return lines, bad


def registry_scores(alias: str, project: Path = Path(".")) -> dict:
    """{"arm", "version", "git_commit", "mIoU": {split: value}} of models:/seggen-segmenter@ALIAS: the
    scores `seggen promote` recorded on the version (its tags `reference.SPLIT.mIoU`), which no later
    evaluation of the same weights -- a branch's, say -- can change."""
    from mlflow.exceptions import MlflowException

    from seggen.pipeline import tracking
    from seggen.pipeline.mlflow_models import KINDS

    client, uri = tracking.open_client(project)
    name = KINDS["segmenter"]
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise ConfigError(
            f"models:/{name}@{alias}: no such alias in {uri} (`seggen promote` sets champion and baseline)"
        ) from None
    ref = {
        k.removeprefix("reference.").removesuffix(".mIoU"): round(float(v), 2)
        for k, v in mv.tags.items()
        if k.startswith("reference.") and k.endswith(".mIoU")
    }
    if not ref:
        raise ConfigError(
            f"models:/{name}@{alias} (version {mv.version}): no scores recorded at its promotion; run `seggen promote`"
        )
    return {
        "arm": mv.tags.get("arm", "segmenter"),
        "version": str(mv.version),
        "git_commit": mv.tags.get("reference.commit", mv.tags.get("git_commit", "?")),
        "data": mv.tags.get("reference.data"),
        "mIoU": dict(sorted(ref.items())),
    }


def data_fingerprint(params) -> str:
    """What the evaluation data is: the benchmark's fingerprint (its params, domains included), or the
    dataset root of real data. Scores on other data are not comparable, whatever the split names say."""
    from seggen.data.meta import META_FILE

    meta = Path(params.data.root) / META_FILE
    try:
        fp = json.loads(meta.read_text()).get("generator", {}).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        fp = None
    return f"benchmark:{fp}" if fp else f"root:{Path(params.data.root).resolve()}"


def project_scores(params_path: Path, arm: str, splits: list[str]) -> dict[str, float]:
    """{key: mIoU} of `arm` from this project's evaluation outputs (what `dvc repro` wrote); a key is a
    split, or SPLIT.domain_mean (the mean over its drawn domains)."""
    from seggen.reporting.scores import gate_scores

    p = load_params(params_path)
    scores = {}
    for key in splits:
        split = key.removesuffix(".domain_mean")
        f = Path(p.evaluate.out) / arm / split / "scores.json"
        if not f.is_file():
            raise ConfigError(not_found(f, "file", f"scores of arm {arm!r} on {split}") + " (run `dvc repro` first)")
        got = gate_scores(json.loads(f.read_text()), split)
        if key in got:  # a key the project lacks (a split without domains now) is reported missing by compare
            scores[key] = got[key]
    return scores


def check_against_alias(alias: str, params_path: Path, tolerance: float | None = None, arm: str | None = None) -> str:
    ref = registry_scores(alias)
    here = data_fingerprint(load_params(params_path))
    if ref["data"] and ref["data"] != here:
        raise ConfigError(
            f"@{alias} (version {ref['version']}) was scored on other data ({ref['data']}; this project: {here}): "
            "its reference does not compare; promote a version scored on this data (`seggen promote`)"
        )
    arm = arm or ref["arm"]
    got = project_scores(params_path, arm, list(ref["mIoU"]))
    tol = DEFAULT_TOLERANCE if tolerance is None else tolerance
    lines, bad = compare(
        {arm: got}, {"mIoU": {arm: ref["mIoU"]}}, tol, f"@{alias}", f"above @{alias} by more than the tolerance"
    )
    head = (
        f"{arm} ({params_path}) against @{alias} = version {ref['version']} "
        f"(arm {ref['arm']}, commit {ref['git_commit'][:12]})"
    )
    text = head + "\n" + "\n".join(lines) + f"\n(tolerance {tol:g} mIoU)"
    if bad:
        raise Regression(f"mIoU regression against @{alias}: " + "; ".join(bad) + "\n" + text)
    return text


def ci_check(
    baseline_path: Path,
    params_path: Path,
    tolerance: float | None = None,
    update: bool = False,
    workdir: Path | None = None,
) -> str:
    if not params_path.exists():
        raise ConfigError(not_found(params_path, "file", "CI params"))
    t0 = time.perf_counter()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="seggen-ci-") as tmp:
            scores = run_small_pipeline(params_path, Path(tmp))
    else:
        scores = run_small_pipeline(params_path, workdir)
    seconds = time.perf_counter() - t0
    if update:
        old = json.loads(baseline_path.read_text()) if baseline_path.exists() else {}
        tol = tolerance if tolerance is not None else old.get("tolerance", DEFAULT_TOLERANCE)
        write_json(
            baseline_path,
            {
                "params": str(params_path),
                "tolerance": tol,
                "mIoU": scores,
                "note": "written by `seggen ci-check --update`; commit it with the change that moved the scores",
            },
        )
        return f"{baseline_path}: baseline updated ({seconds:.0f} s): " + json.dumps(scores)
    if not baseline_path.exists():
        raise ConfigError(f"{baseline_path}: no baseline; create it with `seggen ci-check --update` and commit it")
    try:
        baseline = json.loads(baseline_path.read_text())
        baseline["mIoU"]
    except (ValueError, KeyError):
        raise ConfigError(f"{baseline_path}: not a ci-check baseline (expected JSON with an mIoU table)") from None
    tol = tolerance if tolerance is not None else float(baseline.get("tolerance", DEFAULT_TOLERANCE))
    lines, bad = compare(scores, baseline, tol)
    text = "\n".join(lines) + f"\n({seconds:.0f} s, tolerance {tol:g} mIoU)"
    if bad:
        raise Regression("mIoU regression against " + str(baseline_path) + ": " + "; ".join(bad) + "\n" + text)
    return text
