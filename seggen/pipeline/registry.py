"""The model registry's aliases on the segmenter -- `champion` and `baseline` -- and `seggen promote`,
the only thing that moves them (no pipeline run, DVC experiment or Prefect flow does)."""

from __future__ import annotations

import logging
from pathlib import Path

from seggen.pipeline.tracking import TRACKING_ENV, TrackingError, digest_tree, enabled, git_commit, open_client

log = logging.getLogger(__name__)


def _registered(client, arm_dirs: dict[str, Path], picks: dict[str, str | None]) -> dict[str, tuple[str, str | None]]:
    """{alias: (arm, the registered segmenter version whose digest tag is the arm's model directory's,
    or None)} for each alias with an arm."""
    from seggen.pipeline import mlflow_models as mm

    name = mm.KINDS["segmenter"]
    out = {}
    for alias, arm in picks.items():
        if arm is None or arm not in arm_dirs or not (arm_dirs[arm] / "config.json").exists():
            continue
        digest = digest_tree(arm_dirs[arm])
        found = client.search_model_versions(f"name='{name}' and tags.digest='{digest}'")
        out[alias] = (arm, str(max(found, key=lambda v: int(v.version)).version) if found else None)
    return out


def set_aliases(client, arm_dirs: dict[str, Path], in_domain: dict[str, float], baseline: str | None) -> dict:
    """The registry's aliases on the segmenter: `champion` -> the version of the arm with the best
    in-domain mIoU, `baseline` -> the baseline arm's. A version is found by the digest of the arm's
    model directory (its tag), so the alias names exactly the weights that were scored."""
    from seggen.pipeline import mlflow_models as mm

    picks = {"champion": max(in_domain, key=in_domain.get) if in_domain else None, "baseline": baseline}
    set_to = {}
    for alias, (arm, version) in _registered(client, arm_dirs, picks).items():
        if version is None:
            log.warning("%s: no registered version of its model directory (trained with tracking off?)", arm)
            continue
        client.set_registered_model_alias(mm.KINDS["segmenter"], alias, version)
        set_to[alias] = {"arm": arm, "version": version}
    return set_to


def promote(params, champion: str | None = None, project: Path = Path(".")) -> dict[str, dict]:
    """`seggen promote`: move the registry's aliases -- the only way they move (no run, experiment or
    flow does). `champion` -> the registered version of the arm with the best in-domain mIoU in the
    report (reports/summary.json), or of `champion` if given; `baseline` -> the report's reference arm.
    Each promoted version is tagged with the report's scores of its arm (`reference.SPLIT.mIoU`): what
    `ci-check --against ALIAS` compares with, which no later evaluation of the same weights changes.
    Every alias is resolved before any moves. -> {alias: {"arm", "version", "previous"}}."""
    import json

    from mlflow.exceptions import MlflowException

    from seggen.pipeline import mlflow_models as mm
    from seggen.pipeline.ci_check import data_fingerprint
    from seggen.reporting.scores import decision_split, gate_scores

    if not enabled():
        raise TrackingError(f"seggen promote moves MLflow registry aliases: tracking is off ({TRACKING_ENV})")
    summary_path = Path(params.report.out) / "summary.json"
    if not summary_path.is_file():
        raise TrackingError(f"{summary_path}: no report to promote from (run the pipeline: dvc repro)")
    summary = json.loads(summary_path.read_text())
    split = decision_split(params)  # in-domain, the tuning split where there is one
    scores = {a: s.get(split, {}).get("mIoU") for a, s in summary["arms"].items()}
    scores = {a: v for a, v in scores.items() if v is not None}
    if champion is not None and champion not in scores:
        raise TrackingError(f"--arm {champion}: not an arm of {summary_path} (have: {', '.join(scores) or 'none'})")
    pick = champion or (max(scores, key=scores.get) if scores else None)
    if pick is None:
        raise TrackingError(f"{summary_path}: no arm has an in-domain ({split}) mIoU")
    client, uri = open_client(project)
    name = mm.KINDS["segmenter"]
    dirs = {a: Path(params.arm(a).segmenter.out) / "model" for a in summary["arms"]}
    picks = {"champion": pick, "baseline": summary.get("reference_arm")}
    resolved = _registered(client, dirs, picks)
    missing = [f"{alias} -> {arm}" for alias, (arm, version) in resolved.items() if version is None]
    if "champion" not in resolved or missing:
        raise TrackingError(
            f"{'; '.join(missing) or 'champion -> ' + pick}: no registered version of {dirs[pick].parent.name}'s model "
            f"in {uri} (trained with tracking off? run the pipeline with tracking on); no alias moved"
        )
    moved = {}
    for alias, (arm, version) in resolved.items():
        try:
            previous = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        for s_name, s in summary["arms"][arm].items():
            for key, v in gate_scores(s, s_name).items() if s.get("mIoU") is not None else ():
                client.set_model_version_tag(name, version, f"reference.{key}.mIoU", f"{v:.4f}")
        client.set_model_version_tag(name, version, "reference.commit", git_commit(project))
        client.set_model_version_tag(name, version, "reference.data", data_fingerprint(params))
        client.set_registered_model_alias(name, alias, version)
        moved[alias] = {"arm": arm, "version": version, "previous": previous}
    return moved
