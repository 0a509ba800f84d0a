"""How well the generators draw each class, as the plan's reference segmenter sees it: its per-class IoU
on the blind synthetic pairs of a regime (the image the generators drew against the mask it was drawn
from) beside its IoU on the real `tuning` split (the plan's own figures). Their ratio is the class's
drawability; a class the reference sees on real images but not on synthetic ones is one the generators
do not draw. Reads the ablation's outputs (`dvc repro ablation/dvc.yaml:plan_synthesis` and the blind
`synthesize` stages); reads no reported split. A plan made with plan_synthesis.drawability already holds
the drawn IoU (it is read, not scored again).

The columns: drawability before the threshold (capped at 1; 0 where the reference scores under
plan_synthesis.min_real_iou on the real class, which says nothing of the drawing), then the budget shares
of weakness alone (max(1 - IoU, floor) ** sharpness) and of weakness x drawability with the threshold
(plan_synthesis.min_drawability), which is what a plan with drawability spends.

    python -m benchmarks.drawability            (prints one markdown table per regime)
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import fail

PARAMS = "ablation/params.yaml"


def regime_table(params, regime: str) -> list[str]:
    from seggen.synthesis.targeting import class_weights, drawability, drawn_iou, drawn_weights

    path = Path(params.plan_synthesis.out) / regime / "plan.json"
    if not path.is_file():
        fail(f"{path}: not found; run `dvc repro ablation/dvc.yaml:plan_synthesis` and the blind synthesize stages")
    plan = json.loads(path.read_text())
    model = Path(params.arms_root) / plan["reference"] / "model"  # the arm the plan scored
    real = plan["per_class_iou"]
    held = (plan.get("drawability") or {}).get("iou_drawn", {})
    synth = {}
    for strategy in ("imgsyn", "masksyn"):
        root = Path(params.synthesize.out) / regime / strategy
        if str(root) in held:
            synth[strategy] = held[str(root)]
        else:
            synth[strategy] = drawn_iou(params, model, root, False)
    cfg = params.plan_synthesis
    weak = class_weights(real, cfg.sharpness, cfg.floor)
    draw = drawability(real, list(synth.values()), 0.0, cfg.min_real_iou)
    lever = drawn_weights(weak, drawability(real, list(synth.values()), cfg.min_drawability, cfg.min_real_iou))
    share = lambda w: {c: 100 * w[c] / (sum(w.values()) or 1) for c in w}  # noqa: E731
    s_plan, s_lever = share(weak), share(lever)
    lines = [
        f"Regime `{regime}`, reference `{model.parent.name}`:",
        "",
        "| class | IoU real `tuning` | IoU ImgSyn | IoU MaskSyn | drawability | weakness share "
        "| weakness x drawability |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for c in sorted(real, key=lambda c: -(real[c] or 0)):
        row = [fmt(real[c]), fmt(synth["imgsyn"][c]), fmt(synth["masksyn"][c]), f"{draw[c]:.2f}"]
        lines.append(f"| {c} | " + " | ".join(row + [f"{s_plan[c]:.0f} %", f"{s_lever[c]:.0f} %"]) + " |")
    return lines + [""]


def main() -> None:
    from seggen.config import load_params

    params = load_params(PARAMS)
    for regime in params.ablation.targeted.regimes:
        print("\n".join(regime_table(params, regime)))


if __name__ == "__main__":
    main()
