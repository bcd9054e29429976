"""What a lock publishes about its domains: public names only, never a path on the owner's machine.

A locked folder's ``encoderlock_config.json`` and its card name the authorized and prohibited domains. A local
dataset is reduced to its last path component, a Hub dataset keeps its ``user/name`` id (the card links it), a
built-in domain keeps its canonical name, and a zero-shot lock names only the synthetic data it was locked on.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..data.domains import BUILTIN_DOMAINS, DomainSpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.:-]+$")  # "user/name" or "user/dataset:config"
# One line per built-in domain for the card's training-data section (the recipes of ``data/builtin.py``'s docstring;
# kept here because the data layer has no per-domain description table).
BUILTIN_DESCRIPTIONS = {
    "mnist": "real handwritten digits (MNIST, 28x28 grey, padded to 32x32 RGB)",
    "digits": "scikit-learn's 8x8 UCI optical digits upscaled to 32x32 (a low-resolution, USPS-like domain)",
    "mnist-m": "MNIST digits blended with crops of natural photos (the MNIST-M recipe)",
    "syn-digits": "digits rendered with TrueType fonts on varied backgrounds, with distractors (the SYN-Digits recipe)",
    "letters": "ten upper-case letters rendered on varied backgrounds",
}


def _exists(name: str) -> bool:
    try:
        return Path(name).expanduser().exists()
    except (OSError, ValueError):  # too long, a NUL byte, no home directory: not a path here
        return False


def _is_local_path(name: str) -> bool:
    """Whether ``name`` reads as, or is, a path on this machine (such names are never published)."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).is_absolute()
        or _exists(name)
    )


def is_hub_id(name: Any) -> bool:
    """Whether ``name`` looks like a Hub repository id (``user/name``, a dataset's ``:config`` allowed) and is not
    a path that exists here."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and not _is_local_path(name)


def names_a_repo(name: Any) -> bool:
    """Whether ``name`` is written as a Hub repository id (``user/name``), whether or not a folder of that name
    exists here (an explicit path starts with ``.``, ``/`` or ``~``)."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and ":" not in name


def _public_name(name: str) -> str:
    """``name``, or only its last component when it is a local path."""
    if is_hub_id(name) or not _is_local_path(name):
        return name
    return re.split(r"[\\/]", name.rstrip("/\\"))[-1] or "local"


def public_domain_record(entry: Any) -> Any:
    """A domain as ``encoderlock_config.json`` may record it: a local path (a string, ``+``-joined names, or the
    ``name`` / ``domain`` of a spec dict or :class:`DomainSpec`) reduced to its last component; Hub ids and built-in
    names unchanged."""
    if isinstance(entry, DomainSpec):
        entry = asdict(entry)
    if isinstance(entry, os.PathLike):
        entry = os.fspath(entry)
    if isinstance(entry, str):
        return "+".join(_public_name(part) for part in entry.split("+"))
    if isinstance(entry, dict):
        return {k: public_domain_record(v) if k in ("name", "domain") else v for k, v in entry.items()}
    if isinstance(entry, (list, tuple)):
        return [public_domain_record(e) for e in entry]
    return entry


def _spec_name(entry: Any) -> tuple[str, str | None] | None:
    """``(name, config)`` of a domain recorded as a string or a ``DomainSpec`` dict; ``None`` for synthetic ones."""
    if isinstance(entry, dict) and "zero_shot_generators" in entry:
        return None
    if isinstance(entry, dict) and "domain" in entry:  # unsupervised: the domain, whose labels were never read
        return _spec_name(entry["domain"])
    if isinstance(entry, dict):
        return str(entry.get("name", "unknown")), entry.get("config")
    return str(entry), None


def domain_display_name(entry: Any) -> str:
    """A short public name for a domain recorded as a string or a ``DomainSpec`` dict (no local paths)."""
    if isinstance(entry, dict) and "zero_shot_generators" in entry:  # zero-shot: synthetic data, no real domain
        return f"synthetic ({', '.join(map(str, entry['zero_shot_generators']))})"
    if isinstance(entry, dict) and "domain" in entry:
        return domain_display_name(entry["domain"])
    if isinstance(entry, dict):
        try:
            entry = DomainSpec(**entry).display_name
        except Exception:  # a spec written by another version: fall back to its name
            entry = entry.get("name", "unknown")
    return _public_name(str(entry))


def _builtin(name: str) -> str | None:
    """The canonical built-in domain ``name`` refers to (``"MNIST_M"`` -> ``"mnist-m"``), or ``None``."""
    try:
        display = DomainSpec(name=name).display_name
    except Exception:  # not a valid spec name: not a built-in either
        return None
    return display if display in BUILTIN_DOMAINS else None


def canonical_domain(name: str) -> str:
    """A domain name as the probe reports write it: built-in names canonical (``"MNIST_M"`` -> ``"mnist-m"``)."""
    return _builtin(name) or name


def _is_synthetic(entry: Any) -> bool:
    return isinstance(entry, dict) and "zero_shot_generators" in entry


def declared_domains(lock: dict[str, Any]) -> tuple[list[str], list[str] | None]:
    """``(authorized, prohibited)`` public names of the domains ``encoderlock_config.json`` records; prohibited is
    ``None`` for a zero-shot lock, whose config names only the synthetic data it was locked on."""
    authorized = [canonical_domain(domain_display_name(d)) for d in lock.get("authorized") or []]
    entries = lock.get("prohibited") or []
    if any(_is_synthetic(entry) for entry in entries):
        return authorized, None
    return authorized, [canonical_domain(domain_display_name(d)) for d in entries]


def hub_dataset_id(entry: Any) -> str | None:
    """The Hub dataset id (without its config) a recorded domain was loaded from; ``None`` for built-in, local and
    synthetic domains."""
    found = _spec_name(entry)
    if found is None or _builtin(found[0]) is not None or not is_hub_id(found[0]):
        return None
    return found[0].split(":", 1)[0]


def split_dataset_name(name: str) -> tuple[str, str | None]:
    """``("user/ds", "cfg")`` for a Hub display name ``"user/ds:cfg"``; ``(name, None)`` otherwise."""
    if is_hub_id(name) and ":" in name:
        dataset, config = name.split(":", 1)
        return dataset, config
    return name, None


def describe_training_domain(entry: Any) -> dict[str, Any]:
    """``{"name", "source", "hub_id"}`` of a recorded domain: where its images came from, in words (no paths)."""
    name = domain_display_name(entry)
    unlabelled = ""
    if isinstance(entry, dict) and "domain" in entry:
        pseudo = entry.get("pseudo_labels")
        unlabelled = f"; its labels were never read{f' (pseudo-labels: {pseudo})' if pseudo else ''}"
    found = _spec_name(entry)
    hub_id = hub_dataset_id(entry)
    if found is None:
        images = entry.get("images")
        source = "synthetic images made by hf_encoderlock's zero-shot generators (no real prohibited data)"
        source += f", {images} images" if images else ""
    elif (builtin := _builtin(found[0])) is not None:
        source = f"hf_encoderlock's built-in offline domain `{builtin}`: {BUILTIN_DESCRIPTIONS.get(builtin, builtin)}"
    elif hub_id is not None:
        config = found[1] or (found[0].split(":", 1)[1] if ":" in found[0] else None)
        source = f"the Hub dataset [{hub_id}](https://huggingface.co/datasets/{hub_id})"
        source += f" (config `{config}`)" if config else ""
    elif _is_local_path(found[0]):
        source = "a local dataset that is not published"
    else:
        source = "a dataset recorded by name only (not a Hub `user/name` id)"
    return {"name": name, "source": source + unlabelled, "hub_id": hub_id}
