"""Files written safely: checks before work, shared by the command line and the library.

A base module: it imports nothing of ours but :mod:`napari_probunet.errors`.
"""

from __future__ import annotations

from napari_probunet.errors import UserError


def check_writable(out, example: str):
    """Before any work: refuse an ``--out`` file that cannot be written, with one line.

    Creates its missing folders only to probe them, and removes them again, so a run that
    fails later leaves nothing behind. Returns the expanded :class:`~pathlib.Path` (or ``None``
    for no ``--out``). ``example`` is a file name to suggest (e.g. ``result.json``).
    """
    import os
    from contextlib import suppress
    from pathlib import Path

    if not out:
        return None
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {example}")
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # deepest first
    above = made[-1].parent if made else out.parent
    if not above.is_dir():
        raise UserError(f"cannot write --out {out}: {above} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.probe{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write --out {out} ({exc.strerror or exc}); choose a file "
                        "in a folder you may write to") from None
    finally:
        for folder in made:  # nothing is left behind until there is a result to write
            with suppress(OSError):
                folder.rmdir()
    return out
