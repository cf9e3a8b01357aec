"""Class names from folder names: which folders hold defect-free images, and a prefix they all share.

Real datasets name their class folders ``XY_Pit``, ``XY_Crack``, ``XY_Free``: the defect-free folder is
recognised when a good label (``data.good_labels``) appears in its name as whole words (split on ``_``,
``-`` and white space, case-insensitive; ``not_ok`` is negated, so it is not), and the prefix that every
class folder shares (``XY_``) is not part of a class name (``data.class_prefix``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

#: what separates the words of a folder name or label (``XY_Free``, ``no-defect``, ``OK parts``)
WORD_SEPARATORS = re.compile(r"[_\-\s]+")
#: a word before a good label that turns it into its opposite (``not_ok``, ``non-free``)
NEGATIONS = frozenset({"no", "not", "non"})


def name_words(name: str) -> list[str]:
    """The lower-case words of a name, split on ``_``, ``-`` and white space."""
    return [w for w in WORD_SEPARATORS.split(name.lower()) if w]


def is_good_label(name: str, good_labels: Iterable[str]) -> bool:
    """Whether ``name`` names defect-free images: a good label appears in it as whole words.

    ``XY_Free``, ``free``, ``OK-parts`` and ``XY_No_Defect`` match ``free`` / ``ok`` / ``no_defect``;
    ``Freckle`` (not a whole word) and ``not_ok`` (negated) do not.
    """
    words = name_words(name)
    for label in good_labels:
        wanted = name_words(label)
        if not wanted:
            continue
        for start in range(len(words) - len(wanted) + 1):
            negated = start > 0 and words[start - 1] in NEGATIONS and wanted[0] not in NEGATIONS
            if words[start:start + len(wanted)] == wanted and not negated:
                return True
    return False


def shared_class_prefix(names: Iterable[str]) -> str:
    """The longest prefix, ending in a word separator, that every name has and none is only
    (``XY_Pit``, ``XY_Crack``, ``XY_Free`` → ``XY_``); ``""`` for fewer than two names."""
    names = sorted(set(names))
    if len(names) < 2:
        return ""
    common = os.path.commonprefix(names)
    cut = max((m.end() for m in WORD_SEPARATORS.finditer(common)), default=0)
    prefix = common[:cut]
    return prefix if all(len(n) > len(prefix) for n in names) else ""
