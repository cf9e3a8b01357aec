"""The ``kedro run`` line that applies a diagnosis recommendation, built from the stage's current settings.

A finding's recommendation is a list of :class:`Action`\\ s: one piece of advice and the parameter
changes that carry it out, keyed relative to the stage's block (``lr``, ``loss.class_weights``)
or, for the network every stage shares, as ``model.<key>`` (``model.image_size``). A
:class:`RerunTarget` says how the diagnosed stage runs again and what it ran with;
:meth:`RerunTarget.command` turns a change set into a copy-pasteable line such as::

    kedro run --pipeline=stage2 --params stage2.lr=0.00067,stage2.resume=false

A stage change reruns that stage alone (``<stage>.resume=false``: a finished stage otherwise says
so and does nothing); a ``model`` change retrains every stage (``--pipeline=training``, each
``resume=false``), since they all train that network. Values are written the way Kedro's
``--params`` parses them back (numbers, ``true``/``false``, plain words); lists cannot travel
through ``--params``, so no action changes one (the augmentation recipe is advice only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MODEL_PREFIX = "model."


def format_value(value: Any) -> str:
    """A parameter value as ``--params`` takes it: ``false``, ``balanced``, ``0.00067``, ``128``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.2g}"
        return text if any(c in text for c in ".e") else f"{text}.0"  # 1.0 stays a float, not the int 1
    if value is None:
        return "null"
    text = str(value)
    if any(c in text for c in ", =\"'"):
        raise ValueError(f"{text!r} cannot be passed through kedro run --params (comma, space, quote or '=')")
    return text


@dataclass(frozen=True)
class RerunTarget:
    """How the diagnosed stage is run again, and the settings it ran with.

    Args:
        pipeline: the Kedro pipeline that trains this stage alone (``stage2``).
        stage_key: the parameter block of the stage (``stage2``; ``compare_backbones.stage``).
        stage: the stage's settings as dotted keys relative to its block (``lr``, ``loss.alpha``).
        model: the ``model`` block as dotted keys (``image_size``, ``crop.scale``).
        all_pipeline: the pipeline that trains every stage (a ``model`` change retrains them all).
        all_stage_keys: every stage's block, set to ``resume=false`` by a ``model`` change.
        input_mode_used: what ``model.input_mode`` resolved to (``resize`` / ``crop``), when known.
        later_stages: stages that start from this one's best checkpoint (retrain them after it).
    """

    pipeline: str
    stage_key: str
    stage: Mapping[str, Any]
    model: Mapping[str, Any] = field(default_factory=dict)
    all_pipeline: str = "training"
    all_stage_keys: tuple[str, ...] = ()
    input_mode_used: str | None = None
    later_stages: tuple[str, ...] = ()

    def current(self, key: str) -> Any:
        """The value ``key`` had (``lr``, ``model.image_size``); None when unknown."""
        if key.startswith(MODEL_PREFIX):
            return self.model.get(key[len(MODEL_PREFIX):])
        return self.stage.get(key)

    def parameters(self, changes: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The pipeline to run and the full ``--params`` keys → values that apply ``changes``."""
        params: dict[str, Any] = {}
        for key, value in changes.items():
            params[key if key.startswith(MODEL_PREFIX) else f"{self.stage_key}.{key}"] = value
        if any(key.startswith(MODEL_PREFIX) for key in changes):
            stage_keys = self.all_stage_keys or (self.stage_key,)
            params.update({f"{stage}.resume": False for stage in stage_keys})
            return self.all_pipeline, params
        params[f"{self.stage_key}.resume"] = False
        return self.pipeline, params

    def command(self, changes: Mapping[str, Any]) -> str:
        """The copy-pasteable ``kedro run`` line that applies ``changes`` (see the module docstring)."""
        pipeline, params = self.parameters(changes)
        return f"kedro run --pipeline={pipeline} --params " + ",".join(
            f"{key}={format_value(value)}" for key, value in params.items())


@dataclass
class Action:
    """One way to act on a finding: the advice in words and the parameter changes that carry it out."""

    advice: str
    changes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, target: RerunTarget | None) -> dict[str, Any]:
        """``advice``, and with a target and changes the full ``params`` and the ``command``."""
        out: dict[str, Any] = {"advice": self.advice}
        if target is not None and self.changes:
            out["params"] = target.parameters(self.changes)[1]
            out["command"] = target.command(self.changes)
        return out


class Current:
    """The diagnosed stage's settings for the rules: values and the changes built from them.

    Without a target (a history diagnosed on its own, stage unknown) every value is unknown, so
    actions keep their advice and carry no change.
    """

    def __init__(self, target: RerunTarget | None) -> None:
        self.target = target

    def __call__(self, key: str) -> Any:
        return None if self.target is None else self.target.current(key)

    def change(self, key: str, rule: Callable[[Any], Any]) -> dict[str, Any]:
        """``{key: rule(current value)}``; empty when the value is unknown (``auto``: resolved only when the stage
        starts) or the rule gives it back unchanged."""
        value = self(key)
        if value is None or value == "auto":
            return {}
        new = rule(value)
        return {} if new is None or new == value else {key: new}

    def set(self, key: str, value: Any) -> dict[str, Any]:
        """``{key: value}`` unless the stage already has that value (or its settings are unknown)."""
        if self.target is None or self(key) == value:
            return {}
        return {key: value}


def scaled(factor: float, *, low: float | None = None, high: float | None = None) -> Callable[[Any], Any]:
    """A rule multiplying a number by ``factor`` (an int stays an int, a float keeps two significant
    digits), kept within ``[low, high]``."""
    def rule(value: Any) -> Any:
        if isinstance(value, str):  # auto (epochs: auto): nothing to scale
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            new: float = round(value * factor)
        else:
            new = float(f"{float(value) * factor:.2g}")
        if low is not None:
            new = max(new, low)
        if high is not None:
            new = min(new, high)
        return new
    return rule
