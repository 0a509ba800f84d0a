"""Mask2Former (transformers' Mask2FormerForUniversalSegmentation): the tiny from-scratch default,
a pretrained Mask2Former checkpoint, or a pretrained Swin backbone under a new head."""

from __future__ import annotations

import json
from pathlib import Path

from seggen.config import SegmenterParams
from seggen.data.meta import DatasetMeta
from seggen.errors import DataError

SEG_META = "seggen_segmenter.json"


def _labels(meta: DatasetMeta) -> dict:
    return {
        "id2label": {i: n for i, n in enumerate(meta.names)},
        "label2id": {n: i for i, n in enumerate(meta.names)},
        "num_labels": meta.num_classes,
    }


def build_model(cfg: SegmenterParams, meta: DatasetMeta):
    from transformers import AutoConfig, Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    if cfg.pretrained:
        # a new classifier when the label set differs (e.g. an ADE20K checkpoint fine-tuned on the benchmark)
        return Mask2FormerForUniversalSegmentation.from_pretrained(
            cfg.pretrained, ignore_mismatched_sizes=True, **_labels(meta)
        )
    m = cfg.model
    stages = [f"stage{i + 1}" for i in range(len(m.depths))]
    if cfg.backbone:
        try:
            backbone = AutoConfig.from_pretrained(cfg.backbone)
        except (ValueError, KeyError) as e:  # transformers: an unknown model_type in its config.json
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"segmenter.backbone {cfg.backbone}: not a backbone transformers knows ({first[:200]})"
            ) from None
        backbone.out_features = stages[: len(backbone.depths)]
    else:
        backbone = SwinConfig(
            image_size=cfg.train.crop,
            patch_size=4,
            embed_dim=m.embed_dim,
            depths=list(m.depths),
            num_heads=list(m.num_heads),
            window_size=m.window_size,
            out_features=stages,
        )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=m.hidden_dim,
        mask_feature_size=m.hidden_dim,
        hidden_dim=m.hidden_dim,
        encoder_feedforward_dim=4 * m.hidden_dim,
        dim_feedforward=4 * m.hidden_dim,
        encoder_layers=m.encoder_layers,
        decoder_layers=m.decoder_layers,
        num_attention_heads=max(1, m.hidden_dim // 16),
        num_queries=m.num_queries,
        train_num_points=m.train_num_points,
        **_labels(meta),
    )
    model = Mask2FormerForUniversalSegmentation(config)
    if cfg.backbone:
        from transformers import AutoBackbone

        # the concrete backbone class, not AutoBackbone.from_pretrained: transformers 5 asks the hub
        # whether the name is a repo before looking at the disk, which fails for a local directory
        cls = AutoBackbone._model_mapping[type(backbone)]
        pre = cls.from_pretrained(cfg.backbone, out_features=backbone.out_features)
        model.model.pixel_level_module.encoder.load_state_dict(pre.state_dict())
    return model


def normalise_masks_over_processes(model) -> None:
    """Mask2Former's mask and dice losses are divided by the mean number of target masks per process
    (detectron2: the count summed over processes, divided by their number). transformers'
    Mask2FormerLoss.get_num_masks averages over processes and then divides by their number again, so
    on N processes its mask losses weigh N times more against the class loss. This puts the
    published normalisation on the model's criterion (on one process both are the same)."""
    import types

    import torch

    def get_num_masks(self, class_labels, device):
        n = torch.as_tensor(float(sum(len(c) for c in class_labels)), dtype=torch.float, device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(n)
            n = n / torch.distributed.get_world_size()
        return torch.clamp(n, min=1)

    model.criterion.get_num_masks = types.MethodType(get_num_masks, model.criterion)


def exclude_ignored_pixels(model) -> None:
    """Leave the pixels a filter set aside (`criterion.ignore`, B x H x W bool at the targets' size,
    set before each forward) out of Mask2Former's mask losses and matching costs.

    transformers' Mask2FormerLoss, as detectron2's criterion, scores a mask at points sampled over the
    whole image, and a pixel in no target mask is a negative for every matched query. Label 0 alone
    therefore teaches "nothing here" on exactly the pixels where the generators drew an object the
    filter did not trust. FreeMask's pixel filter was made for per-pixel cross-entropy, whose ignore
    index drops the pixel; here each sampled point is weighted by 1 - ignore at that point (read
    bilinearly, as the targets are):

        loss_mask = sum_masks [ sum_p w_p BCE(x_p, y_p) / sum_p w_p ] / num_masks
        loss_dice = sum_masks [ 1 - (2 sum_p w_p s_p y_p + 1) / (sum_p w_p s_p + sum_p w_p y_p + 1) ] / num_masks

    with s = sigmoid(x); w = 1 everywhere gives the published losses. The matcher's costs take the
    same weights at its points. The class loss would still teach "no object" there: a query that
    predicts the drawn object is matched to no target, and its class target is "no object". So an
    unmatched query's cross-entropy is weighted by the share of its predicted mask outside ignored
    pixels, 1 - sum_p s_p ign_p / sum_p s_p (no gradient through the weight); matched queries keep
    weight 1. With `ignore` None (every batch without such pixels) the published code runs, bit for bit."""
    import types

    import torch
    import torch.nn.functional as F
    from scipy.optimize import linear_sum_assignment
    from transformers.models.mask2former.modeling_mask2former import sample_point

    criterion, matcher = model.criterion, model.criterion.matcher
    criterion.ignore = None
    published_loss_masks, published_loss_labels = criterion.loss_masks, criterion.loss_labels
    published_match = matcher.forward
    outside = {}  # each query's predicted-mask share outside ignored pixels: loss_masks -> loss_labels

    def kept_at(points: torch.Tensor, images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """1 - ignore of `images` (indices into the batch) at `points` (n x P x 2) -> n x P: exactly 0
        where every neighbour of a point is ignored; the edge pixels extend past the image (not zeros)."""
        keep = (~criterion.ignore[images]).to(like.dtype)[:, None]
        return sample_point(keep, points.to(like.dtype), align_corners=False, padding_mode="border").squeeze(1)

    def loss_masks(self, masks_queries_logits, mask_labels, indices, num_masks):
        if criterion.ignore is None:
            return published_loss_masks(masks_queries_logits, mask_labels, indices, num_masks)
        with torch.no_grad():  # for loss_labels, which Mask2FormerLoss.forward calls next with the same layer
            probs = masks_queries_logits.float().sigmoid()  # B x Q x h x w
            ign = F.interpolate(criterion.ignore[:, None].float(), size=probs.shape[-2:], mode="area")
            outside["share"] = 1 - (probs * ign).sum((-2, -1)) / probs.sum((-2, -1)).clamp(min=1e-6)
        src_idx = self._get_predictions_permutation_indices(indices)
        tgt_idx = self._get_targets_permutation_indices(indices)
        pred_masks = masks_queries_logits[src_idx][:, None]
        target_masks, _ = self._pad_images_to_max_in_batch(mask_labels)
        target_masks = target_masks[tgt_idx][:, None]
        with torch.no_grad():  # the published point sampling (uncertain points + random ones)
            points = self.sample_points_using_uncertainty(
                pred_masks,
                self.calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            labels = sample_point(target_masks, points, align_corners=False).squeeze(1)
            w = kept_at(points, tgt_idx[0], labels)
        logits = sample_point(pred_masks, points, align_corners=False).squeeze(1)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        probs = logits.sigmoid() * w
        dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + (labels * w).sum(-1) + 1)
        return {
            "loss_mask": ((bce * w).sum(1) / w.sum(1).clamp(min=1e-6)).sum() / num_masks,
            "loss_dice": dice.sum() / num_masks,
        }

    def loss_labels(self, class_queries_logits, class_labels, indices):
        if criterion.ignore is None:
            return published_loss_labels(class_queries_logits, class_labels, indices)
        b, q, _ = class_queries_logits.shape
        idx = self._get_predictions_permutation_indices(indices)
        target = torch.full((b, q), self.num_labels, dtype=torch.int64, device=class_queries_logits.device)
        target[idx] = torch.cat([t[j] for t, (_, j) in zip(class_labels, indices)])
        keep = outside.pop("share").to(class_queries_logits.device)
        keep[idx] = 1.0  # matched queries: their class, at full weight
        # nn.CrossEntropyLoss(weight=empty_weight)'s weighted mean, each query also weighted by keep
        w = self.empty_weight[target] * keep
        ce = F.cross_entropy(class_queries_logits.transpose(1, 2), target, reduction="none")
        return {"loss_cross_entropy": (w * ce).sum() / w.sum().clamp(min=1e-6)}

    @torch.no_grad()
    def match(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels):
        if criterion.ignore is None:
            return published_match(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
        indices = []
        for i in range(masks_queries_logits.shape[0]):
            cost_class = -class_queries_logits[i].softmax(-1)[:, class_labels[i]]
            pred_mask = masks_queries_logits[i][:, None]
            target_mask = mask_labels[i].to(pred_mask)[:, None]
            points = torch.rand(1, self.num_points, 2, device=pred_mask.device)  # as the published matcher
            target = sample_point(target_mask, points.repeat(len(target_mask), 1, 1), align_corners=False).squeeze(1)
            pred = sample_point(pred_mask, points.repeat(len(pred_mask), 1, 1), align_corners=False).squeeze(1)
            w = kept_at(points, torch.tensor([i], device=pred.device), pred)  # 1 x P
            wn = w / w.sum().clamp(min=1e-6)  # the mean over kept points
            pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none") * wn
            neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none") * wn
            cost_mask = pos @ target.T + neg @ (1 - target).T
            s = pred.sigmoid() * w
            cost_dice = 1 - (2 * s @ target.T + 1) / (s.sum(-1)[:, None] + (target * w).sum(-1)[None, :] + 1)
            cost = self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
            top = torch.finfo(cost.dtype).max
            indices.append(linear_sum_assignment(torch.nan_to_num(cost, nan=top, posinf=top, neginf=top).cpu()))
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]

    criterion.loss_masks = types.MethodType(loss_masks, criterion)
    criterion.loss_labels = types.MethodType(loss_labels, criterion)
    matcher.forward = types.MethodType(match, matcher)


def save_image_processor(directory: Path, ignore_index: int = 255) -> None:
    """The preprocessing of seggen's training and evaluation as a transformers image processor
    (ImageNet mean/std on 0-1 pixels, no resize), so that `pipeline("image-segmentation", model=dir)`
    loads the segmenter directory and sees its inputs as seggen does."""
    from transformers import Mask2FormerImageProcessor

    from seggen.segmenter.data import MEAN, STD

    Mask2FormerImageProcessor(
        do_resize=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(v) for v in MEAN / 255],
        image_std=[float(v) for v in STD / 255],
        ignore_index=ignore_index,
        do_reduce_labels=False,
        size_divisor=0,
    ).save_pretrained(directory)


def load_model(model_dir: str | Path):
    """A trained seggen segmenter directory, or any Mask2Former checkpoint directory / id."""
    from transformers import Mask2FormerForUniversalSegmentation

    from seggen.training.checkpoint import tree_problem

    model_dir = Path(model_dir) if Path(model_dir).exists() else model_dir
    info = {}
    if isinstance(model_dir, Path):
        if not model_dir.is_dir():
            raise DataError(f"{model_dir}: is a file, not a Mask2Former model directory")
        if not (model_dir / "config.json").exists():
            raise DataError(f"{model_dir}: not a Mask2Former model directory (no config.json)")
        problem = tree_problem(model_dir)  # a truncated file is named here, not deep inside from_pretrained
        if problem:
            raise DataError(problem)
        if (model_dir / SEG_META).exists():
            info = json.loads((model_dir / SEG_META).read_text())
        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("model_type") != "mask2former":
            raise DataError(f"{model_dir}: is a {cfg.get('model_type')} model, expected mask2former")
    try:
        model = Mask2FormerForUniversalSegmentation.from_pretrained(model_dir)
    except (ValueError, KeyError) as e:  # transformers: an unknown backbone type, a config that does not fit
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{model_dir}: cannot be loaded as a Mask2Former ({first[:200]})") from None
    return model.eval(), info
