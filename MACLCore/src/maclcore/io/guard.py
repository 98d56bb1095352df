"""One guard for every command: no output may replace one of the command's inputs.

Paths are compared resolved (symbolic links, ``..``) and by file identity (``st_dev``, ``st_ino``), so an
output that is a hard link to, or a symbolic link of, an input is caught as well; an input folder counts
with every file inside it.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ..errors import InputError, PathLike

Paths = Union[None, PathLike, Sequence[PathLike]]
# Files looked at inside an input folder at most (a folder of scans holds far fewer).
MAX_FILES = 200_000


def _as_list(paths: Paths) -> List[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths if p is not None]


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        result = os.stat(path)
    except (OSError, ValueError):
        return None
    return (result.st_dev, result.st_ino)


def _files_inside(folder: str) -> Iterator[str]:
    count = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(root, name)
            count += 1
            if count >= MAX_FILES:
                return


def refuse_overwriting_inputs(outputs: Iterable[Tuple[str, Paths]], inputs: Iterable[Tuple[str, Paths]]) -> None:
    """Raise :class:`InputError` when an output is one of the inputs (or a file inside an input folder).

    Args:
        outputs: (setting, path or paths) of everything the command will write, e.g. ``("output", "m.pt")``.
        inputs: (setting, path or paths) of everything it reads: files or folders (all files inside count).

    Call it before any work, so that a refused command has read and written nothing.
    """
    targets: List[Tuple[str, str, str, Optional[Tuple[int, int]]]] = []
    for setting, paths in outputs:
        for path in _as_list(paths):
            targets.append((setting, path, os.path.realpath(path), _identity(path)))
    if not targets:
        return
    by_real: Dict[str, Tuple[str, str]] = {real: (setting, path) for setting, path, real, _ in targets}
    by_identity: Dict[Tuple[int, int], Tuple[str, str]] = {ident: (setting, path) for setting, path, _, ident
                                                            in targets if ident is not None}
    for in_setting, paths in inputs:
        for source in _as_list(paths):
            real = os.path.realpath(source)
            if real in by_real or (_identity(source) is not None and _identity(source) in by_identity):
                out_setting, out_path = by_real.get(real) or by_identity[_identity(source)]  # type: ignore[index]
                what = "folder" if os.path.isdir(source) else "file"
                raise InputError(out_path, f"is the {{{in_setting}}} input {what} {source}; writing {{{out_setting}}} "
                                           f"there would overwrite it (choose another {{{out_setting}}})")
            if not by_identity or not os.path.isdir(source):
                continue  # nothing that exists can be overwritten, or no folder to look into
            for inside in _files_inside(source):
                ident = _identity(inside)
                if ident is not None and ident in by_identity:
                    out_setting, out_path = by_identity[ident]
                    what = (f"is a file of the {{{in_setting}}} input {source}"
                            if os.path.realpath(inside) == os.path.realpath(out_path) else
                            f"is the same file as {inside} of the {{{in_setting}}} input {source} (a hard or "
                            "symbolic link)")
                    raise InputError(out_path, f"{what}; writing {{{out_setting}}} there would overwrite it (choose "
                                               f"another {{{out_setting}}})")


def schema_file(schema: Optional[str]) -> Optional[str]:
    """The file a label-schema option names (None for a built-in schema's name), as an input to guard."""
    return schema if schema and os.path.isfile(schema) else None
