"""The model families dalle runs, each declared in its own folder. Importing this imports no torch.

A registry entry names its family; a local folder's family comes from its `dalle.json`, else from the
`_class_name` of its `model_index.json`.
"""

from ..errors import ModelNotFoundError
from .family import Family
from .kandinsky import FAMILY as KANDINSKY
from .unclip import FAMILY as UNCLIP

FAMILIES: dict[str, Family] = {family.name: family for family in (UNCLIP, KANDINSKY)}


def family_named(name: str, where: str) -> Family:
    """The family called `name`; `ModelNotFoundError` (its message starting with `where`) for an unknown one."""
    if name not in FAMILIES:
        raise ModelNotFoundError(f"{where}: unknown model family {name!r} (dalle runs {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_of_class(class_name: object, where: str) -> tuple[Family, str]:
    """The family that runs pipelines of `class_name` (a `model_index.json` `_class_name`), and the role such a
    folder plays in it."""
    for family in FAMILIES.values():
        if class_name in family.class_names:
            return family, family.class_names[class_name]
    known = ", ".join(name for family in FAMILIES.values() for name in family.class_names)
    raise ModelNotFoundError(f"{where}: dalle cannot run a {class_name} (it runs {known})")
