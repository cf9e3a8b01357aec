"""What a stage's records say about it, in plain values: the best of each validation metric over its
history, and where its weights started, in words (the summary, the benchmarks and the reports share them).
"""

from __future__ import annotations

import pandas as pd

# history column → whether higher is better; the best of each over the epochs is in the summary
BEST_VALUE_COLUMNS = {"val_loss": False, "val_combined_score": True, "val_miou": True, "val_macro_f1": True}


def best_values(history: pd.DataFrame) -> dict[str, float]:
    """The best value over the epochs of each :data:`BEST_VALUE_COLUMNS` column the history has."""
    return {column: float(history[column].max() if higher else history[column].min())
            for column, higher in BEST_VALUE_COLUMNS.items()
            if column in history.columns and history[column].notna().any()}


def describe_initial_weights(init_from: str, *, pretrained: bool, checkpoint_path: str | None) -> str:
    """Where a stage's weights started, in words, from what it was built with.

    ``init_from`` as the summary records it (``scratch``, ``resume`` or the file the weights came
    from); ``pretrained`` and ``checkpoint_path``: the ``model`` settings applied to a fresh
    network (they only apply to ``scratch``).
    """
    if init_from == "scratch":
        if checkpoint_path:
            return f"backbone weights from {checkpoint_path} (model.checkpoint_path), the rest randomly initialised"
        if pretrained:
            return "pretrained backbone weights (model.pretrained: true), the rest randomly initialised"
        return "random initialisation (model.pretrained: false, no model.checkpoint_path)"
    if init_from == "resume":
        return "its own last checkpoint (resumed; where the interrupted run started is not recorded)"
    return f"the weights of {init_from}"
