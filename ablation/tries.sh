#!/usr/bin/env bash
# The generator-side tries of ablation/tuning.md section 12, on the default pipeline's outputs (`make run`
# first): for each change, its synthetic data under data/tries/NAME, then its segmenter arm, scored on the
# tuning splits only. Generators of a try go to models/tries/NAME.
set -euo pipefail
S="seggen --offline -p ablation/tries.yaml"   # throwaway runs: no MLflow runs or registered models
synth() {  # NAME, then --set overrides
  local name=$1; shift
  for t in masksyn imgsyn; do $S "$@" --set synthesize.out=data/tries/$name synthesize --strategy $t; done
}
synth mult2 --set synthesize.masksyn_per_source=2 --set synthesize.imgsyn_per_source=2
synth pixel --set synthesize.filter.pixel=true --set synthesize.filter.out=models/tries/filter_segmenter
$S --set mask2img.out=models/tries/mask2img900 train_mask2img --steps 900
synth m2i900 --set synthesize.mask2img=models/tries/mask2img900/model
$S --set text2mask.out=models/tries/text2mask1200 train_text2mask --steps 1200
synth t2m1200 --set synthesize.text2mask=models/tries/text2mask1200/model
for a in mult2 pixel m2i900 t2m1200; do $S train_segmenter --arm $a && $S evaluate --arm $a; done
