"""Label schemas in the module: the registry's default, an editable text form, and annotation checks.

A schema is MACLCore's ``LabelSchema`` (names and RGB colours of labels 1..K); ``maclcore.labels`` is the
one registry, imported inside the functions.
"""

from typing import Any, Dict, List, Optional

from .errors import InputError


def defaultSchema() -> Any:
    """The default label schema of the registry (cardiac: RV cavity, LV myocardium, LV cavity)."""
    from maclcore.labels import CARDIAC

    return CARDIAC


def registeredSchemaName(schema: Any) -> Optional[str]:
    """Name under which MACLCore knows a schema with these label names in this order (case-insensitive)."""
    from maclcore.labels import SCHEMAS

    wanted = [name.lower() for name in schema.names]
    for key, known in SCHEMAS.items():
        if [name.lower() for name in known.names] == wanted:
            return key
    return None


def writeSchemaFile(schema: Any, folder: str) -> str:
    """Write a schema the user edited as JSON (``maclcore finetune --labels-schema FILE``); returns the path."""
    import json
    import os

    path = os.path.join(folder, "labels_schema.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(schema.to_dict(), handle, indent=1)
    return path


def _hexColor(color: Any) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in color)


def formatSchemaText(schema: Any) -> str:
    """One line per label, ``NAME #rrggbb``, in label order: the editable form shown in the module."""
    return "\n".join(f"{name} {_hexColor(color)}" for name, color in zip(schema.names, schema.colors))


def parseSchemaText(text: str) -> Any:
    """A schema from :func:`formatSchemaText`'s form; a line without a colour gets a grey."""
    from maclcore.errors import MaclError
    from maclcore.labels import LabelSchema, heart_wall, is_heart

    names, colors = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        name, _, color = line.rpartition(" ")
        if not color.startswith("#"):
            name, color = line, "#808080"
        name = name.strip()
        if len(color) != 7 or not name:
            raise InputError(f"Label schema line {number} ({line!r}): write a name and a colour like #ff8800")
        try:
            colors.append(tuple(int(color[i:i + 2], 16) / 255.0 for i in (1, 3, 5)))
        except ValueError:
            raise InputError(f"Label schema line {number}: {color!r} is not a colour like #ff8800") from None
        names.append(name)
    try:  # the cardiac labels, in any colours, keep the heart's post-processing
        return LabelSchema(names=tuple(names), colors=tuple(colors), one_object=is_heart(names),
                           wall_encloses=heart_wall(names))
    except MaclError as exc:
        raise InputError(str(exc)) from None


def segmentsByName(segmentationNode: Any) -> Dict[str, str]:
    """Lower-case segment name -> segment ID."""
    segmentation = segmentationNode.GetSegmentation()
    found = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        found[segmentation.GetSegment(segmentId).GetName().strip().lower()] = segmentId
    return found


def matchSegments(segmentationNode: Any, schema: Any) -> List[str]:
    """Segment IDs in schema order (label 1, 2, ...); InputError unless the names match the schema.

    Names match case-insensitively; a missing schema label or an extra segment is a mismatch.
    """
    name = segmentationNode.GetName()
    present = segmentsByName(segmentationNode)
    expected = ", ".join(schema.names)
    extra = [key for key in present if key not in {n.lower() for n in schema.names}]
    if extra:
        segmentation = segmentationNode.GetSegmentation()
        shown = segmentation.GetSegment(present[extra[0]]).GetName()
        raise InputError(f"'{name}': segment '{shown}' is not in the label schema ({expected}); rename or "
                         f"delete it")
    missing = [label for label in schema.names if label.lower() not in present]
    if missing:
        raise InputError(f"'{name}': no segment named '{missing[0]}' (the label schema is {expected})")
    return [present[label.lower()] for label in schema.names]
