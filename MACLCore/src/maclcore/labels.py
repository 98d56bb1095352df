"""Label schemas: the names and colours of the foreground classes a model segments.

This is the one registry that the CLI choices and the Slicer module read. Label value 0 is always
background; foreground class ``i`` (1-based) is ``names[i - 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from .errors import ConfigError

RGB = Tuple[float, float, float]

# Label maps are stored as 8-bit everywhere (files, caches, predictions): background + 255 labels. More would
# wrap around (label 256 read as background, a missed class then scoring Dice 1.0), so the schema refuses them.
MAX_LABELS = 255


def name_key(name: str) -> str:
    """The form in which two label names are the same name: case and runs of white space do not count."""
    return " ".join(name.split()).lower()


def _name_problem(name: object) -> str:
    if not isinstance(name, str):
        return f"must be text, got {name!r}"
    if not name.strip():
        return "must not be empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        # A newline would end the .seg.nrrd header field it is written in and inject the rest as a new field.
        return f"must not contain control characters such as a line break, got {name!r}"
    return ""


@dataclass(frozen=True)
class LabelSchema:
    """Names and RGB colours (0..1) of the foreground labels 1..K.

    ``single_component``: each label is one connected object (true of the cardiac structures), so
    predictions keep only each label's largest connected component. ``one_object``: the labels together
    form one connected object too (the heart), so the largest component of all foreground is kept first;
    off unless a schema says so (two separate organs would lose one). ``wall_encloses``: (wall, cavity)
    label values where, in each slice, the background the wall encloses is the cavity (the LV myocardium's
    ring holds the LV cavity), so predictions fill it.
    """

    names: Tuple[str, ...]
    colors: Tuple[RGB, ...]
    single_component: bool = True
    one_object: bool = False
    wall_encloses: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("labels_schema", "needs at least one foreground label")
        if len(self.names) != len(self.colors):
            raise ConfigError("labels_schema", f"has {len(self.names)} names but {len(self.colors)} colours")
        if len(self.names) > MAX_LABELS:
            raise ConfigError("labels_schema", f"has {len(self.names)} labels; at most {MAX_LABELS} are supported "
                                               "(label maps are 8-bit)")
        for name in self.names:
            problem = _name_problem(name)
            if problem:
                raise ConfigError("labels_schema", f"label name {problem}")
        if len({name_key(n) for n in self.names}) != len(self.names):
            raise ConfigError("labels_schema",
                              f"names must be unique, ignoring case and spaces (got {list(self.names)})")
        for name, color in zip(self.names, self.colors):
            if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
                raise ConfigError("labels_schema", f"colour of {name!r} must be three values in [0, 1], got {color}")
        if self.wall_encloses is not None:
            values = tuple(self.wall_encloses)
            if len(values) != 2 or len(set(values)) != 2 or not all(1 <= v <= len(self.names) for v in values):
                raise ConfigError("labels_schema", "'wall_encloses' must be two different label values in "
                                                   f"1..{len(self.names)}, got {self.wall_encloses!r}")

    @property
    def num_classes(self) -> int:
        """Number of output classes including background."""
        return len(self.names) + 1

    def to_dict(self) -> Dict[str, object]:
        return {"names": list(self.names), "colors": [list(c) for c in self.colors],
                "single_component": self.single_component, "one_object": self.one_object,
                "wall_encloses": None if self.wall_encloses is None else list(self.wall_encloses)}

    @classmethod
    def from_dict(cls, data: Dict[str, Sequence]) -> "LabelSchema":
        names, colors = data["names"], data["colors"]
        # A string is a sequence too: "names": "ABC" must not become three labels A, B, C.
        if not isinstance(names, (list, tuple)):
            raise ConfigError("labels_schema", f"'names' must be a list of label names, got {names!r}")
        if not isinstance(colors, (list, tuple)) or any(not isinstance(c, (list, tuple)) for c in colors):
            raise ConfigError("labels_schema", f"'colors' must be a list of [r, g, b] triples, got {colors!r}")
        enclosure = data.get("wall_encloses", heart_wall(names))
        if enclosure is not None and (not isinstance(enclosure, (list, tuple))
                                      or not all(isinstance(v, int) for v in enclosure)):
            raise ConfigError("labels_schema", f"'wall_encloses' must be a pair of label values, got {enclosure!r}")
        return cls(names=tuple(names),  # checked to be text by __post_init__
                   colors=tuple(tuple(float(v) for v in c) for c in colors),  # type: ignore[misc]
                   single_component=bool(data.get("single_component", True)),
                   one_object=bool(data.get("one_object", is_heart(names))),
                   wall_encloses=None if enclosure is None else tuple(enclosure))  # type: ignore[arg-type]

    def value_of(self, name: str) -> int:
        """Label value of a segment name (case and spaces ignored, see :func:`name_key`); KeyError when unknown."""
        key = name_key(name)
        for value, known in enumerate(self.names, start=1):
            if name_key(known) == key:
                return value
        raise KeyError(name)


# ACDC's three structures, in ACDC's label order (1 RV cavity, 2 LV myocardium, 3 LV cavity).
CARDIAC = LabelSchema(
    names=("RV cavity", "LV myocardium", "LV cavity"),
    colors=((0.302, 0.584, 0.929), (0.384, 0.780, 0.361), (0.890, 0.337, 0.278)),
    one_object=True,  # both cavities touch the myocardium
    wall_encloses=(2, 3),  # the myocardium's ring holds the LV cavity in a short-axis slice
)


def is_heart(names: Sequence[str]) -> bool:
    """Whether ``names`` are the cardiac labels (case and spaces ignored): they form one object together.
    The default of ``one_object`` where nobody said (model files from before it, a schema typed in Slicer)."""
    if not all(isinstance(n, str) for n in names):  # refused by LabelSchema itself, with its own message
        return False
    return [name_key(n) for n in names] == [name_key(n) for n in CARDIAC.names]


def heart_wall(names: Sequence[str]) -> Optional[Tuple[int, int]]:
    """The default of ``wall_encloses`` where nobody said: the heart's (myocardium, LV cavity) for the
    cardiac labels, else none."""
    return CARDIAC.wall_encloses if is_heart(names) else None


SCHEMAS: Dict[str, LabelSchema] = {"cardiac": CARDIAC}


def get_schema(name: str) -> LabelSchema:
    """A registered schema by name, or one read from a JSON file ``{"names": [...], "colors": [[r, g, b], ...]}``
    (colours in 0..1), for label sets edited by the user (e.g. in the Slicer module)."""
    if name in SCHEMAS:
        return SCHEMAS[name]
    if name.lower().endswith(".json"):
        return read_schema_file(name)
    raise ConfigError("labels_schema", f"is unknown: {name!r} (known: {', '.join(SCHEMAS)}, or a .json file)")


def read_schema_file(path: str) -> LabelSchema:
    """Read a label schema from JSON; problems are reported against the file."""
    import json

    from .errors import InputError

    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from None
    try:
        return LabelSchema.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"is not a label schema: it needs 'names' and 'colors' lists ({exc})") from None
    except ConfigError as exc:
        raise InputError(path, str(exc)) from None
