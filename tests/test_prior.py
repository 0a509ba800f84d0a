"""The generative prior: corpus, train_prior stage, Mask2Img over the prior, style prompts,
variants and the ImgSyn diversity measure. Tiny configs: seconds on CPU."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import TINY_UNET, tiny_params
from seggen.config import Params, load_params, parse_overrides
from seggen.data.corpus import (
    VOCABULARY,
    draw_look,
    generate_corpus,
    in_domain_look,
    look_distance,
    read_corpus,
    read_looks,
    sample_look,
    vocabulary_phrases,
)
from seggen.data.domains import LABELLED, draw_domains
from seggen.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corpus_is_deterministic_records_its_looks_and_writes_no_masks(tmp_path):
    a = generate_corpus(tmp_path / "a", 40, 32, 5, seed=3, progress=False)
    generate_corpus(tmp_path / "b", 40, 32, 5, seed=3, workers=2, progress=False)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")  # whatever the worker count
    assert a["leak_domains"] == 0 and 0 < a["distance_to_labelled"]["min"] <= a["distance_to_labelled"]["median"]
    files = {p.name for p in (tmp_path / "a").iterdir()} - {".seggen"}  # the ownership marker
    assert files == {"images", "captions.jsonl", "summary.json", "preview.png"}
    assert all(p.suffix == ".jpg" for p in (tmp_path / "a" / "images").iterdir())  # images only, no masks
    rows = read_corpus(tmp_path / "a")
    assert len(rows) == 40 and all(p.exists() for p, _ in rows)
    # every caption names the content and the look, in the vocabulary's words
    assert all(c.rsplit(", ", 1)[1] in vocabulary_phrases() for _, c in rows)
    assert sum(a["styles"].values()) == 40
    looks = read_looks(tmp_path / "a")  # recorded: the report measures the corpus's distance to each domain
    assert len(looks) == 40 and [lk.phrase() for lk in looks] == [c.rsplit(", ", 1)[1] for _, c in rows]


def test_corpus_looks_read_no_evaluation_domain_and_the_leak_reference():
    # the corpus's looks depend on its own stream alone: other evaluation domains, the same looks
    rng = np.random.default_rng(0)
    plain = [draw_look(rng) for _ in range(300)]
    assert plain == [sample_look(r) for r in [np.random.default_rng(0)] for _ in range(300)]
    unseen = draw_domains(1, 2, 8, 0.8)
    assert min(look_distance(lk, d) for lk in plain for d in unseen) > 0  # no corpus look is an unseen domain
    rng = np.random.default_rng(0)
    leak = [draw_look(rng, unseen) for _ in range(300)]
    assert sum(look_distance(lk, d) == 0 for lk in leak for d in unseen) > 10  # the unseen domains themselves
    assert look_distance(in_domain_look(), LABELLED) == 0 and in_domain_look().phrase() == "a photo"


def test_style_prompts_are_phrases_of_the_generic_vocabulary():
    """The synthesis styles come from the fixed vocabulary (time of day, weather, camera, medium), not from any
    evaluation domain: every default style is a phrase the corpus captioner writes, the vocabulary holds words
    only (no number, no domain name), and the drawn domains' records name no vocabulary word."""
    p = load_params(REPO / "params.yaml")
    assert set(p.synthesize.styles) <= vocabulary_phrases()
    words = [w for group in VOCABULARY.values() for w in group]
    assert all(w.replace(" ", "").isalpha() for w in words)
    assert set(VOCABULARY) == {"time of day", "weather", "camera", "medium"}
    for phrase in p.synthesize.styles:  # each default style says one thing of the vocabulary at most
        said = [w for w in words if w in phrase and w != "photo"]
        assert len(said) <= 1, phrase
    record = json.dumps([d.record() for d in draw_domains(1, 2, 8, 0.8)])
    assert not any(w in record for w in words if w not in ("photo",))


def test_read_corpus_names_the_file(tmp_path):
    with pytest.raises(DataError, match="captions.jsonl"):
        read_corpus(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match=r"captions.jsonl:1: not a corpus row"):
        read_corpus(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"id": "../../x", "caption": "a road"}\n')
    with pytest.raises(DataError, match=r"captions.jsonl:1: image id '../../x' points outside the corpus"):
        read_corpus(tmp_path)


def test_style_draw_follows_the_weights_and_depends_on_the_seed_only():
    from seggen.synthesis.plan import draw_style

    styles = {"a photo": 3.0, "a night photo": 1.0}
    draws = [draw_style(styles, s) for s in range(4000)]
    assert draws == [draw_style(styles, s) for s in range(4000)]
    assert abs(draws.count("a photo") / 4000 - 0.75) < 0.03
    assert draw_style({}, 1) is None and draw_style({"x": 1.0}, 5) == "x"


def test_style_params_are_validated():
    with pytest.raises(ConfigError, match=r"synthesize\.style_swap: needs a broad base"):
        load_params(REPO / "params.yaml", parse_overrides(["prior.enabled=false", "synthesize.style_swap=true"]))
    with pytest.raises(ConfigError, match=r"synthesize\.styles"):
        load_params(REPO / "params.yaml", parse_overrides(['synthesize.styles={"a photo": -1}']))
    with pytest.raises(ConfigError, match=r"prior\.resolution"):
        load_params(
            REPO / "params.yaml",
            parse_overrides(["prior.enabled=true", "prior.resolution=32", "mask2img.resolution=64"]),
        )


def test_the_benchmark_prior_is_refused_for_real_data_and_profiles_replace_styles_whole(tmp_path):
    with pytest.raises(ConfigError, match=r"prior\.enabled: the bundled corpus is the benchmark's"):
        load_params(REPO / "params.yaml", parse_overrides(["data.format=ade20k", "data.root=x"]))
    p = load_params(REPO / "params.yaml", parse_overrides(["data.format=ade20k", "data.root=x", "prior.enabled=false"]))
    assert p.mask2img.base == "auto"  # Mask2Img from scratch
    # the real-data profiles keep the paper's prompts: a profile's styles replace the defaults whole
    (tmp_path / "p.yaml").write_text(f"extends: {REPO / 'params.yaml'}\nsynthesize:\n  styles: {{a photo: 1}}\n")
    assert load_params(tmp_path / "p.yaml").synthesize.styles == {"a photo": 1.0}
    ade = load_params(REPO / "profiles" / "real-ade20k.yaml")
    assert ade.synthesize.styles == {} and ade.mask2img.caption_style is None


def test_variants_move_outputs_beside_the_main_ones_and_reject_other_sections(tmp_path):
    doc = {"variants": {"noprior": {"prior.enabled": False, "synthesize.style_swap": False, "synthesize.styles": {}}}}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    p = load_params(f)
    v = p.variant("noprior")
    assert v.prior.enabled is False and v.synthesize.styles == {}
    assert v.prior.out == Path("models/prior-noprior") and v.mask2img.out == Path("models/mask2img-noprior")
    assert v.synthesize.mask2img == Path("models/mask2img-noprior/model")
    assert v.synthesize.out == Path("data/synthetic-noprior")
    with pytest.raises(ConfigError, match=r"variants\.other: no such variant"):
        p.variant("other")
    f.write_text(yaml.safe_dump({"variants": {"x": {"segmenter.seed": 1}}}))
    with pytest.raises(ConfigError, match=r"variants\.x\.segmenter\.seed"):
        load_params(f)


def tiny_prior_params(tmp_path: Path, data_root: Path, **extra) -> Params:
    prior = {
        "enabled": True,
        "out": str(tmp_path / "prior"),
        "resolution": 16,
        "unet": {**TINY_UNET, "pooled_text": True},
        "corpus": {"out": str(tmp_path / "corpus"), "num_images": 24, "resolution": 16, "max_things": 3},
        "train": {"steps": 3, "batch_size": 4, "checkpoint_every": 2, "threads": 1, "warmup_steps": 1},
        "sample": {"steps": 2, "guidance_scale": 2.0, "batch_size": 4},
    }
    return load_params(tiny_params(tmp_path, data_root, prior=prior, **extra))


def test_prior_pretrain_mask2img_over_it_and_style_swap(small_benchmark, tmp_path):
    from seggen.data.corpus import prepare_corpus
    from seggen.generators.mask2img import train_mask2img
    from seggen.generators.pipelines import SegGenMask2ImgPipeline, SegGenPriorPipeline, seeded
    from seggen.generators.prior import train_prior

    p = tiny_prior_params(tmp_path, small_benchmark, **{"mask2img.base": "finetune", "mask2img.prior_mix": 0.5})
    assert prepare_corpus(p, progress=False)["images"] == 24
    model = train_prior(p, progress=False)
    assert (tmp_path / "prior" / "samples.png").exists()
    prompts = ["a house, a night photo", "a house, a line drawing"]
    imgs = SegGenPriorPipeline.from_model_dir(model)(prompts, 1, 2, 2.0, seeded([1, 1]), output_type="uint8").images
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    m2i = train_mask2img(p, progress=False)
    info = json.loads((m2i / "seggen_model.json").read_text())
    assert info["base"] == "finetuned" and info["prior"]
    assert (m2i / "unet_prior").is_dir()  # the broad base kept beside the fine-tuned one
    assert (tmp_path / "m2i" / "styles.png").exists()
    cmap = np.zeros((16, 16, 3), np.uint8)
    cmap[8:] = 200
    both = SegGenMask2ImgPipeline.from_model_dir(m2i, style_swap=None)
    drawn = {}
    for swap in (False, True):
        pipe = SegGenMask2ImgPipeline.from_model_dir(m2i, style_swap=swap)  # only the base it steers
        assert (pipe.unet is None, pipe.unet_prior is None) == (swap, not swap)
        for p_ in (pipe, both):
            out = p_(
                cmap, "a road, a night photo", 2, 2, generator=seeded([3, 3]), style_swap=swap, output_type="uint8"
            )
            assert out.images.shape == (2, 16, 16, 3)
            assert np.array_equal(out.images[0], out.images[1])  # same seed, same prompt
            drawn.setdefault(swap, []).append(out.images)
    assert all(np.array_equal(*v) for v in drawn.values()) and not np.array_equal(drawn[False][0], drawn[True][0])


def test_prior_is_skipped_when_not_enabled_or_with_real_weights(small_benchmark, tmp_path):
    from seggen.data.corpus import prepare_corpus
    from seggen.generators.prior import train_prior

    p = load_params(
        tiny_params(
            tmp_path,
            small_benchmark,
            prior={"enabled": False, "out": str(tmp_path / "prior"), "corpus": {"out": str(tmp_path / "corpus")}},
        )
    )
    assert "prior.enabled is false" in prepare_corpus(p, progress=False)["skipped"]
    model = train_prior(p, progress=False)
    meta = json.loads((model / "seggen_model.json").read_text())
    assert "prior.enabled is false" in meta["skipped"]
    assert (tmp_path / "prior" / "checkpoints").is_dir() and not list((tmp_path / "prior" / "checkpoints").iterdir())


def test_frozen_base_without_a_broad_one_is_an_error(small_benchmark, tmp_path):
    with pytest.raises(ConfigError, match=r"mask2img\.base"):
        load_params(tiny_params(tmp_path, small_benchmark, **{"mask2img.base": "frozen"}))


def test_spread_and_class_colours():
    from seggen.synthesis.diversity import class_colours, spread

    assert spread([np.zeros(3)]) is None
    assert spread([np.zeros(3), np.full(3, 2.0)]) == pytest.approx(np.sqrt(3))
    img = np.zeros((8, 8, 3), np.uint8)
    img[:4] = 200
    lab = np.zeros((8, 8), np.uint8)
    lab[:4], lab[4:] = 1, 2
    cols = class_colours(img, lab, 2)
    assert np.allclose(cols[1], 200) and np.allclose(cols[2], 0)
