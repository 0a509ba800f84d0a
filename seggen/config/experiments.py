"""Runs other than the pipeline's main one, all picked by name with `--arm` (`pick`): an arm (a set of
`segmenter` keys, its model at arms_root/ARM), a data regime (a set of `synthesize` keys, its datasets at
synthesize.out/REGIME), a variant (other generators, their outputs beside the main ones with -NAME),
REGIME-VARIANT (a variant's datasets for a regime), REGIME-targeted and REGIME-targeted-r2 (a regime's
datasets spent by its plan in round 1 and 2 of the loop), the ablation, which expands to arms (regime
x group x seed, regime x variant x seed, and REGIME-targeted(-r2)-sSEED for the regimes of
ablation.targeted), and a round of the pipeline's closed loop (`loop.rounds`: its plan, its datasets and
its arm, one name).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from seggen.config.base import _ARM_BODY
from seggen.config.loading import _format_error, _set_dotted
from seggen.config.schema import DEFAULT_SEEDS, Params
from seggen.config.synthesis import SynthesizeParams
from seggen.errors import ConfigError

VARIANT_SECTIONS = ("prior", "mask2img", "synthesize")
TARGETED = "targeted"  # the arms and datasets spent by a plan: REGIME-targeted(-sSEED), synthesize.out-targeted


def targeted_name(regime: str, rnd: int = 1) -> str:
    """The name of regime `regime`'s targeted synthesis in round `rnd` (`--arm`): REGIME-targeted,
    REGIME-targeted-r2, ...; its arms are this name + -sSEED."""
    return f"{regime}-{TARGETED}" + (f"-r{rnd}" if rnd > 1 else "")


def targeted_rounds(tg: Any, regime: str) -> int:
    """How many rounds regime `regime`'s loop runs (ablation.targeted, as params or as the raw mapping)."""
    later = (tg.get("round2") or []) if isinstance(tg, dict) else tg.round2
    return 2 if regime in later else 1


def round_dir(regime: str, rnd: int) -> str:
    """The folder (under plan_synthesis.out and synthesize.out-targeted) of a regime's round: REGIME, REGIME-r2, ..."""
    return regime + (f"-r{rnd}" if rnd > 1 else "")


def variant_path(path: Path, name: str) -> Path:
    """Where variant `name` writes what the main setup writes at `path`: models/prior -> models/prior-NAME."""
    return path.with_name(f"{path.name}-{name}")


def ablation_arms(data: Any) -> Any:
    """With `ablation`, the arms are REGIME-GROUP-sSEED for every regime, group and seed: the group's
    segmenter keys, the seed as segmenter.seed, the regime's synthetic data (synthesize.out/REGIME) and
    its real subset. Hand-listed arms would contradict them: `arms` must then be {} (or absent)."""
    if not isinstance(data, dict) or not data.get("ablation"):
        return data
    if data.get("arms"):
        raise ValueError("arms: generated from `ablation` (regime x group x seed); set `arms: {}`")
    ab = data["ablation"]
    if not isinstance(ab, dict) or not isinstance(ab.get("groups"), dict):
        return data  # the field validation below names what is wrong
    for group in ab["groups"]:
        if not isinstance(group, str) or not re.fullmatch(_ARM_BODY, group):
            raise ValueError(f"ablation.groups.{group}: group names are lowercase letters, digits, - and _")
    regimes = data.get("regimes") or {"": {}}
    root = Path((data.get("synthesize") or {}).get("out", SynthesizeParams().out))
    variants = data.get("variants") or {}
    vgroup = ab.get("variant_group", "both")
    if variants and vgroup not in ab["groups"]:
        raise ValueError(f"ablation.variant_group: {vgroup!r} is not a group (have: {', '.join(ab['groups'])})")
    clash = sorted(set(variants) & set(ab["groups"]))
    if clash:
        raise ValueError(f"variants.{clash[0]}: also the name of a group; an arm name would be ambiguous")
    arms = {}
    for regime, over in regimes.items():
        runs = [(g, k, root) for g, k in ab["groups"].items()]
        runs += [(v, ab["groups"][vgroup], variant_path(root, v)) for v in variants]
        for group, keys, syn_root in runs:
            for seed in ab.get("seeds", DEFAULT_SEEDS):
                entry = dict(keys or {}, seed=seed)
                if regime:
                    entry["synthetic_root"] = str(syn_root / regime)
                    if (over or {}).get("real_subset"):
                        entry["real_subset"] = over["real_subset"]
                elif syn_root != root:
                    entry["synthetic_root"] = str(syn_root)
                arms[f"{regime}-{group}-s{seed}" if regime else f"{group}-s{seed}"] = entry
    arms.update(_targeted_arms(ab, regimes, root, variants))
    return {**data, "arms": arms}


def _targeted_arms(ab: dict, regimes: dict, root: Path, variants: dict) -> dict:
    """REGIME-targeted-sSEED for every regime of ablation.targeted and seed: the group's segmenter keys
    on the regime's planned data (synthesize.out-targeted/REGIME), its real subset; for the regimes of
    ablation.targeted.round2 also REGIME-targeted-r2-sSEED, on both rounds' data."""
    tg = ab.get("targeted") or {}
    if not isinstance(tg, dict):
        return {}
    for regime in tg.get("regimes") or []:
        if regime not in regimes:
            raise ValueError(f"ablation.targeted.regimes: {regime!r} is not a regime (have: {', '.join(regimes)})")
    later = tg.get("round2") or []
    if (
        not isinstance(later, list)
        or not all(isinstance(r, str) for r in later)
        or set(later) - set(tg.get("regimes") or [])
    ):
        raise ValueError(f"ablation.targeted.round2: {later!r} must list regimes of ablation.targeted.regimes")
    if not tg.get("regimes"):
        return {}
    groups, seeds = ab["groups"], ab.get("seeds", DEFAULT_SEEDS)
    for where, names in (("ablation.groups", groups), ("variants", variants)):
        if TARGETED in names:
            raise ValueError(f"{where}.{TARGETED}: the name of the targeted arms; choose another name")
    group = tg.get("group", "both")
    if group not in groups:
        raise ValueError(f"ablation.targeted.group: {group!r} is not a group (have: {', '.join(groups)})")
    ref = str(tg.get("reference", "baseline-s0"))
    g, _, s = ref.rpartition("-s")
    if g not in groups or not s.isdigit() or int(s) not in seeds:
        raise ValueError(f"ablation.targeted.reference: {ref!r} is not GROUP-sSEED of the ablation's groups and seeds")
    over = tg.get("segmenter") or {}  # the targeted arms' own segmenter keys over the group's
    if not isinstance(over, dict) or {"seed", "synthetic_root", "out", "real_subset"} & set(over):
        raise ValueError(
            "ablation.targeted.segmenter: a mapping of segmenter keys other than those the arms get from the "
            "ablation (seed, synthetic_root, out, real_subset)"
        )
    arms = {}
    for regime in tg["regimes"]:
        for rnd in range(1, targeted_rounds(tg, regime) + 1):
            # round R trains on the data of rounds 1..R (one folder each)
            data = [str(variant_path(root, TARGETED) / round_dir(regime, r)) for r in range(1, rnd + 1)]
            for seed in seeds:
                entry = dict(groups[group] or {}, **over, seed=seed, synthetic_root=data[0] if rnd == 1 else data)
                if (regimes[regime] or {}).get("real_subset"):
                    entry["real_subset"] = regimes[regime]["real_subset"]
                arms[f"{targeted_name(regime, rnd)}-s{seed}"] = entry
    return arms


def round_chain(rounds: dict, name: str) -> list[str]:
    """The rounds whose data round `name`'s arm trains on, first round first: `name`, the round it plans
    after, that round's, ... (`rounds`: loop.rounds, as params or as the raw mapping)."""
    chain, seen = [], set()
    while name in rounds:
        if name in seen:
            raise ValueError(f"loop.rounds.{name}: its `after` chain comes back to it ({' <- '.join(chain)})")
        seen.add(name)
        chain.append(name)
        after = rounds[name]
        name = after.get("after") if isinstance(after, dict) else after.after
    return chain[::-1]


def loop_arms(data: Any, default_arms: dict) -> Any:
    """With `loop.rounds`, one arm per round: arms.<loop.arm>'s segmenter keys on the data of the round and
    of every round before it (loop.out/ROUND), so `--arm ROUND` trains and evaluates like any arm. An arm
    of that name must be the one generated (as in params dumped and validated again)."""
    if not isinstance(data, dict) or not isinstance(data.get("loop"), dict):
        return data
    loop = data["loop"]
    rounds = loop.get("rounds") or {}
    if not isinstance(rounds, dict) or not rounds:
        return data  # the field validation names what is wrong
    if data.get("ablation"):  # the ablation runs its own loop (ablation.targeted) and none of these stages
        return data
    arms = dict(data["arms"] if isinstance(data.get("arms"), dict) else default_arms)
    ref = loop.get("arm", "seggen")
    if ref in rounds and ref in arms:
        raise ValueError(f"loop.rounds.{ref}: also an arm of `arms`; a round's arm is named after it")
    if ref not in arms or ref in rounds:
        raise ValueError(f"loop.arm: {ref!r} is not an arm (arms: {', '.join(a for a in arms if a not in rounds)})")
    keys = arms[ref] or {}
    segmenter = data.get("segmenter") if isinstance(data.get("segmenter"), dict) else {}
    if not isinstance(keys, dict) or keys.get("strategy", segmenter.get("strategy", "real")) == "real":
        raise ValueError(f"loop.arm: arm {ref!r} trains on real data only; a round's arm trains on its data")
    root = Path(loop.get("out", "data/loop"))
    for name, entry in rounds.items():
        if not isinstance(name, str) or not re.fullmatch(_ARM_BODY, name):
            raise ValueError(f"loop.rounds.{name}: round names are lowercase letters, digits, - and _")
        after = entry.get("after") if isinstance(entry, dict) else None
        if not isinstance(after, str):
            raise ValueError(f"loop.rounds.{name}: expected {{after: ARM}}, the arm or round it plans after")
        if after not in rounds and (after not in arms or after == name):
            raise ValueError(f"loop.rounds.{name}.after: {after!r} is neither an arm nor a round")
    for name in rounds:
        made = dict(keys, synthetic_root=[str(root / r) for r in round_chain(rounds, name)])
        if name in arms and arms[name] != made:
            raise ValueError(f"loop.rounds.{name}: also an arm of `arms`; a round's arm is named after it")
        arms[name] = made
    return {**data, "arms": arms}


def loop_round(params: Params, name: str) -> Params:
    """Round `name` of loop.rounds: its plan scores the arm it plans after (plan_synthesis.out = loop.out/NAME/plan;
    after another round, that round's plan is the one to beat), its datasets are spent by that plan with the
    keys of loop.synthesize (synthesize.out = loop.out/NAME), and its arm is `name`."""
    rounds, out = params.loop.rounds, Path(params.loop.out)
    after = rounds[name].after
    plan = params.plan_synthesis.model_copy(
        update={
            "reference": after,
            "out": out / name / "plan",
            "round": len(round_chain(rounds, name)),
            "previous": out / after / "plan" / "plan.json" if after in rounds else None,
        }
    )
    for key in params.loop.synthesize:
        if key.split(".")[0] in ("out", "plan"):
            raise ConfigError(f"loop.synthesize.{key}: a round's plan and datasets go to loop.out/{name}")
    p = arm(params, name).model_copy(update={"plan_synthesis": plan})
    return p.model_copy(update={"synthesize": _planned(p, params.loop.synthesize, "loop.synthesize", out / name)})


def pick(params: Params, name: str) -> Params:
    """These params resolved for run `name`: an arm, a variant, a regime or REGIME-VARIANT (in that order;
    the names cannot clash: Params checks)."""
    if name in params.loop.rounds and params.ablation is None:
        return loop_round(params, name)
    if name in params.arms:
        return arm(params, name)
    if name in params.variants:
        return variant(params, name)
    if name in params.regimes:
        return regime(params, name)
    reg, _, var = name.partition("-")
    if reg in params.regimes and var in params.variants:
        return regime(variant(params, var), reg)
    tg = params.ablation.targeted if params.ablation else None
    rounds = (
        {targeted_name(reg, r): r for r in range(1, targeted_rounds(tg, reg) + 1)} if tg and reg in tg.regimes else {}
    )
    if name in rounds:
        return targeted(params, reg, rounds[name])
    have = [*params.arms, *params.variants, *params.regimes]
    have += [f"{r}-{v}" for r in params.regimes for v in params.variants]
    have += [targeted_name(r, k) for r in (tg.regimes if tg else []) for k in range(1, targeted_rounds(tg, r) + 1)]
    raise ConfigError(f"--arm {name}: no such arm, variant or regime (have: {', '.join(have) or 'none'})")


def names_clash(params: Params) -> str | None:
    """The first name that two of arms, variants and regimes share (then `--arm NAME` would be ambiguous)."""
    seen: dict[str, str] = {}
    combos = {f"{r}-{v}": "regime-variant" for r in params.regimes for v in params.variants}
    for group, names in (("arms", params.arms), ("variants", params.variants), ("regimes", params.regimes)):
        for name in names:
            if name in seen:
                return f"{group}.{name}: also a name of {seen[name]}; `--arm {name}` would be ambiguous"
            seen[name] = group
    for name, kind in combos.items():
        if name in seen:
            return f"{seen[name]}.{name}: also a {kind} pair; `--arm {name}` would be ambiguous"
    return None


def variant(params: Params, name: str) -> Params:
    """These params with variant `name`'s keys set, its outputs moved beside the main ones (-NAME)."""
    if name not in params.variants:
        raise ConfigError(f"variants.{name}: no such variant (have: {', '.join(params.variants) or 'none'})")
    tree = params.model_dump(mode="json")
    for key, value in params.variants[name].items():
        if key.split(".")[0] not in VARIANT_SECTIONS:
            raise ConfigError(f"variants.{name}.{key}: a variant sets keys of {', '.join(VARIANT_SECTIONS)} only")
        _set_dotted(tree, key, value, f"variants.{name}")
    for section, key in (("prior", "out"), ("mask2img", "out"), ("synthesize", "out")):
        tree[section][key] = str(variant_path(Path(tree[section][key]), name))
    tree["prior"]["corpus"]["out"] = str(variant_path(Path(tree["prior"]["corpus"]["out"]), name))
    tree["synthesize"]["mask2img"] = str(Path(tree["mask2img"]["out"]) / "model")
    tree["arms"], tree["variants"] = {}, {}
    tree["loop"]["rounds"] = {}  # the loop's arms train on the main generators' rounds
    try:
        return type(params).model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(f"variants.{name}", e)) from None


def regime(params: Params, name: str) -> Params:
    """These params with `synthesize` set to what regime `name` synthesizes (out: synthesize.out/NAME);
    where the regime has targeted arms, its plan too: the reference arm REGIME-REFERENCE, scored into
    plan_synthesis.out/NAME."""
    if "out" in params.regimes.get(name, {}):
        raise ConfigError(f"regimes.{name}.out: a regime's datasets go to synthesize.out/{name}")
    p = _overridden(params, "regimes", name, "synthesize", Path(params.synthesize.out) / name)
    if params.ablation and name in params.ablation.targeted.regimes:
        tg = params.ablation.targeted
        update = {"reference": f"{name}-{tg.reference}", "out": p.plan_synthesis.out / name}
        if tg.drawability:  # the regime's blind sets (ablation/dvc.yaml: the plan stages' deps)
            update["drawability"] = [p.synthesize.out / s for s in ("masksyn", "imgsyn")]
        plan = p.plan_synthesis.model_copy(update=update)
        p = p.model_copy(update={"plan_synthesis": plan})
    return p


def targeted(params: Params, name: str, rnd: int = 1) -> Params:
    """Regime `name`'s synthesis in round `rnd` of its loop, spent by that round's plan, with the keys of
    ablation.targeted.synthesize. Round 1 plans from the regime's reference arm (plan_synthesis.out/NAME);
    round R > 1 from round R-1's arm of the first seed, after round R-1's plan (its mIoU is the one to
    beat): plan_synthesis.out/NAME-rR. Its datasets: synthesize.out-targeted/NAME(-rR)."""
    p = regime(params, name)
    if rnd > 1:
        seed = params.ablation.seeds[0]  # ablation/dvc.yaml: ${ablation.seeds.0}
        cfg = p.plan_synthesis.model_copy(
            update={
                "reference": f"{targeted_name(name, rnd - 1)}-s{seed}",
                "out": params.plan_synthesis.out / round_dir(name, rnd),
                "previous": params.plan_synthesis.out / round_dir(name, rnd - 1) / "plan.json",
                "round": rnd,
            }
        )
        p = p.model_copy(update={"plan_synthesis": cfg})
    out = variant_path(Path(params.synthesize.out), TARGETED) / round_dir(name, rnd)
    keys = params.ablation.targeted.synthesize
    return p.model_copy(update={"synthesize": _planned(p, keys, "ablation.targeted.synthesize", out)})


def _planned(p: Params, keys: dict[str, Any], source: str, out: Path):
    """p's `synthesize` with the dotted `keys` (from `source`) set, spent by p's plan, its datasets at `out`."""
    tree = p.synthesize.model_dump(mode="json")
    for key, value in keys.items():
        _set_dotted(tree, key, value, source)
    tree["plan"] = str(p.plan_synthesis.out / "plan.json")
    tree["out"] = str(out)
    try:
        return type(p.synthesize).model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e)) from None


def arm(params: Params, name: str) -> Params:
    """These params with `segmenter` set to what arm `name` trains."""
    return _overridden(params, "arms", name, "segmenter", Path(params.arms_root) / name)


def _overridden(params: Params, group: str, name: str, section: str, out: Path) -> Params:
    """`section` with the keys of `group`.`name` (an arm or a regime) set and `out` moved to `out`."""
    entries = getattr(params, group)
    if name not in entries:
        raise ConfigError(f"{group}.{name}: no such {group[:-1]} (have: {', '.join(entries) or 'none'})")
    current = getattr(params, section)
    tree = current.model_dump(mode="json")
    tree["out"] = str(out)
    for key, value in entries[name].items():
        _set_dotted(tree, key, value, f"{group}.{name}")
    try:
        new = type(current).model_validate(tree)
    except ValidationError as e:
        raise ConfigError(
            _format_error(f"{group}.{name}", e).replace(f"{group}.{name}: ", f"{group}.{name}.", 1)
        ) from None
    return params.model_copy(update={section: new})
