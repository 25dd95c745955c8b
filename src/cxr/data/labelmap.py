"""Mapping another data set's class names onto a model's classes (external validation).

Another hospital's folders or manifest may say `COVID-19`, `NORMAL`, `No_Finding` or `PNEUMONIA`
where the model says `COVID` and `Normal`. Each name found is resolved, in this order:
1. the user's label map (`--label-map FILE`, YAML `their name: our class`, `their name: ignore`, or
   `their name: abnormal` for a class that is abnormal but none of the model's, e.g. `TB: abnormal`:
   its images keep their own name and count against Normal, `cxr.metrics.abnormal`), whose keys
   match whatever their spelling of case, blanks, '-' and '_';
2. a class of the model (the same loose spelling);
3. a built-in alias (`BUILTIN_ALIASES`, e.g. `No Finding` -> Normal); `APPROXIMATE_ALIASES` are
   applied with a warning, since the correspondence is only rough (`PNEUMONIA`, bacterial and viral,
   -> Viral_Pneumonia).
A name none of them resolves is a CxrError naming it, the model's classes and the closest one.
The mapping used is always logged, one line per name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from cxr.data.discover import Discovery, normalize_class_name
from cxr.errors import CxrError
from cxr.suggest import did_you_mean

log = logging.getLogger(__name__)

IGNORE = "ignore"  # a label map value: leave these images out
ABNORMAL = "abnormal"  # a label map value: a foreign abnormal class (not the model's), scored against Normal
BUILTIN_ALIASES = {  # squashed name -> class (only used when the model has that class)
    "covid": "COVID", "covid19": "COVID", "covidpositive": "COVID", "sarscov2": "COVID",
    "normal": "Normal", "nofinding": "Normal", "nofindings": "Normal", "healthy": "Normal", "negative": "Normal",
    "lungopacity": "Lung_Opacity", "opacity": "Lung_Opacity",
    "viralpneumonia": "Viral_Pneumonia", "pneumoniaviral": "Viral_Pneumonia",
}
APPROXIMATE_ALIASES = {"pneumonia": "Viral_Pneumonia"}  # rough: PNEUMONIA sets mix bacterial and viral cases


def squash(name: str) -> str:
    """A name without case, blanks, '-' and '_' ('No_Finding' -> 'nofinding')."""
    return re.sub(r"[\s_\-]+", "", str(name).strip()).lower()


@dataclass(frozen=True)
class Mapping:
    """How one name of the data was resolved."""

    name: str  # as found in the data (after discovery's own normalisation)
    target: str | None  # a model class, or None for ignored images
    how: str  # "label map", "class", "alias", "approximate alias"
    raw: tuple[str, ...] = ()  # the folder or manifest names discovery read as `name`, where they differ
    abnormal: bool = False  # a foreign abnormal class: `target` is the data's own name, not a model class


def read_label_map(path: str | Path) -> dict[str, str]:
    """The YAML label map `their name: our class | ignore`; a CxrError names a bad file or entry."""
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"label map not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CxrError(f"label map {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise CxrError(f"label map {path} must be a mapping 'their name: our class' (or ': ignore'), "
                       f"got {type(data).__name__}")
    bad = [k for k, v in data.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise CxrError(f"label map {path}: the value of {bad[0]!r} must be a class name or 'ignore'")
    return {str(k): str(v).strip() for k, v in data.items()}


def resolve_name(name: str, classes: Sequence[str], user: dict[str, str] | None = None) -> Mapping:
    """Resolve one class name of the data (see the module docstring)."""
    by_squash = {squash(c): c for c in classes}
    for key, value in (user or {}).items():
        if squash(key) == squash(name) or normalize_class_name(key) == name:  # discovery renamed 'COVID-19'
            if value.lower() == IGNORE:
                return Mapping(name, None, "label map")
            if value.lower() == ABNORMAL:
                if squash(name) in by_squash:
                    raise CxrError(f"label map: {key!r} -> abnormal, but {name!r} is a class of the model "
                                   f"({', '.join(classes)}); 'abnormal' is for classes the model does not have")
                return Mapping(name, name, "label map: abnormal, not a class of the model", abnormal=True)
            if value not in classes:
                raise CxrError(f"label map: {key!r} -> {value!r}, which is not a class of the model "
                               f"({', '.join(classes)}){did_you_mean(value, classes)}; or map it to 'ignore' "
                               "(or 'abnormal': a foreign abnormal class)")
            return Mapping(name, value, "label map")
    if squash(name) in by_squash:
        return Mapping(name, by_squash[squash(name)], "class")
    for table, how in ((BUILTIN_ALIASES, "alias"), (APPROXIMATE_ALIASES, "approximate alias")):
        target = table.get(squash(name))
        if target in classes:
            return Mapping(name, target, how)
    raise CxrError(
        f"class {name!r} of the external data is not a class of the model ({', '.join(classes)})"
        f"{did_you_mean(name, classes)}; map it with --label-map FILE (YAML '{name}: <class>' or "
        f"'{name}: ignore')"
    )


def _user_for(user: dict[str, str] | None, raw: tuple[str, ...]) -> dict[str, str] | None:
    """The user's entries, those naming one of the raw spellings first (they are the more specific)."""
    if not user or not raw:
        return user
    first = {k: v for k, v in user.items() if any(squash(k) == squash(r) for r in raw)}
    return {**first, **{k: v for k, v in user.items() if k not in first}}


def apply_label_map(
    found: Discovery, classes: Sequence[str], user: dict[str, str] | None = None, *, where: str = "external data"
) -> tuple[Discovery, list[Mapping]]:
    """`found` with every label mapped onto `classes` (ignored images left out), and the mapping used.

    Images of a class mapped to `abnormal` keep the data's name; the returned discovery's classes are
    the model classes present, then those foreign names (`foreign_classes`). The mapping is logged;
    a discovery left with no image is a CxrError.
    """
    raw = {name: tuple(r for r, n in found.renamed.items() if n == name) for name in found.classes}
    mappings = [replace(resolve_name(name, classes, _user_for(user, raw[name])), raw=raw[name])
                for name in found.classes]
    target = {m.name: m.target for m in mappings}
    for m in mappings:
        shown = m.target if m.target is not None else "ignored"
        spelled = f"{', '.join(map(repr, m.raw))} (read as {m.name!r})" if m.raw else repr(m.name)
        (log.warning if m.how == "approximate alias" else log.info)(
            "%s: class %s -> %s (%s)%s", where, spelled, shown, m.how,
            "; give --label-map FILE if that is not what this set means" if m.how == "approximate alias" else "")
    samples = [replace(s, label=target[s.label]) for s in found.samples if target[s.label] is not None]
    if not samples:
        raise CxrError(f"{where}: every image was ignored by the label map; nothing to evaluate")
    foreign = foreign_classes(mappings)
    labels = {s.label for s in samples}
    present = [c for c in classes if c in labels] + [c for c in foreign if c in labels]
    return replace(found, samples=samples, classes=present), mappings


def foreign_classes(mappings: Sequence[Mapping]) -> list[str]:
    """The names of the data mapped to `abnormal` (foreign abnormal classes), in mapping order."""
    return [m.name for m in mappings if m.abnormal]
