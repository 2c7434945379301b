"""What a user writes: ``step``, ``chain``, ``group``, ``chord``, and how a shape becomes steps.

A shape compiles into a flat list of ``StepPlan``: each leaf step gets a path (its place in the
shape, "1.0.2"), the paths it waits for (``after``: the last steps of whatever came before it in
its chain) and what it receives as its first argument (``receives``, a template of results).

Passing convention (Celery's): in a chain, each step receives the previous link's result as its
first positional argument, before its own arguments; the result of a group is the list of its
members' results in the order written, so a step after a group (a chord's callback) receives that
list. ``step(...).immutable()`` (Celery's ``si``) receives nothing. The first step receives
nothing. Pure: no database, no Django set-up needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Union

ON_ERROR = "on_error"  # the path of the error callback's step


class WorkflowError(ValueError):
    """A workflow that cannot be enqueued; one sentence says what is wrong and how to fix it."""


def task_classes() -> tuple[type, ...]:
    """The Task classes of the task frameworks importable here (``base.Task`` in every version)."""
    import importlib

    found = []
    for module in ("django.tasks.base", "django_tasks.base"):
        try:
            cls = importlib.import_module(module).Task
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def is_task(value: Any) -> bool:
    classes = task_classes()
    return bool(classes) and isinstance(value, classes)


def task_path(task: Any) -> str:
    return str(getattr(task, "module_path", "") or getattr(task, "name", ""))


class _Enqueueable:
    __slots__ = ()

    def enqueue(self, *, on_error: Step | None = None, name: str = "") -> Any:
        """Write the workflow in the current transaction and enqueue its first steps; returns a
        ``WorkflowHandle``. ``on_error``: a step enqueued once if a step fails for good."""
        from task_supervisor.workflows.enqueue import enqueue

        return enqueue(self, on_error=on_error, name=name)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Step(_Enqueueable):
    """A task with its arguments; ``receives``: it gets the previous result first (see above)."""

    task: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    receives: bool = True

    def immutable(self) -> Step:
        """This step ignores the previous result: it runs with its own arguments only."""
        return replace(self, receives=False)


@dataclass(frozen=True, slots=True)
class Chain(_Enqueueable):
    members: tuple[Shape, ...]


@dataclass(frozen=True, slots=True)
class Group(_Enqueueable):
    members: tuple[Shape, ...]


@dataclass(frozen=True, slots=True)
class Chord(_Enqueueable):
    header: Group
    callback: Shape


Shape = Union[Step, Chain, Group, Chord]  # noqa: UP007 (a runtime alias, used by isinstance)
SHAPES = (Step, Chain, Group, Chord)


def step(task: Any, /, *args: Any, **kwargs: Any) -> Step:
    """``task`` (a ``@task``, optionally ``.using(...)``) with its arguments, as one step."""
    if isinstance(task, SHAPES):
        raise WorkflowError(f"step() takes a task, got a {type(task).__name__.lower()}; pass it to chain() or group().")
    if not is_task(task):
        raise WorkflowError(
            f"step() takes a task (a function decorated with @task), got {task!r}; decorate it with @task."
        )
    return Step(task, tuple(args), dict(kwargs))


def _members(kind: str, members: Sequence[Any]) -> tuple[Shape, ...]:
    if not members:
        raise WorkflowError(f"{kind}() needs at least one step; an empty {kind} would never finish.")
    for member in members:
        if not isinstance(member, SHAPES):
            hint = "wrap the task in step(task, ...)" if is_task(member) else "pass step(), chain(), group() or chord()"
            raise WorkflowError(f"{kind}() takes steps, chains, groups and chords, got {member!r}; {hint}.")
    return tuple(members)


def chain(*members: Shape) -> Chain:
    """Run one after another; each receives the previous one's result (see the module's doc)."""
    return Chain(_members("chain", members))


def group(*members: Shape) -> Group:
    """Run in parallel; the group's result is the list of its members' results, in order."""
    return Group(_members("group", members))


def chord(header: Group | Sequence[Shape], callback: Shape) -> Chord:
    """Run ``header``'s members in parallel, then ``callback`` once, with the list of their results."""
    if not isinstance(header, Group):
        if isinstance(header, SHAPES) or not isinstance(header, list | tuple):
            raise WorkflowError(f"chord() takes a group (or a list of steps) first, got {header!r}; use group(...).")
        header = group(*header)
    (callback,) = _members("chord", [callback])
    return Chord(header, callback)


# -- compiling a shape into steps -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepPlan:
    path: str
    position: int
    step: Step
    after: tuple[str, ...]
    receives: Any  # a results template (see ``resolve``), or None


@dataclass(frozen=True, slots=True)
class _Incoming:
    after: tuple[str, ...] = ()
    value: Any = None  # the template of what came before, None at the start


def compile_shape(shape: Shape, on_error: Step | None = None) -> tuple[list[StepPlan], Any]:
    """The steps of ``shape`` in the order written, and the template of the workflow's result."""
    if not isinstance(shape, SHAPES):
        raise WorkflowError(f"A workflow is a step, chain, group or chord, got {shape!r}; build one with chain(...).")
    plans: list[StepPlan] = []
    output, _ = _compile(shape, "0" if isinstance(shape, Step) else "", _Incoming(), plans)
    if on_error is not None:
        if not isinstance(on_error, Step):
            raise WorkflowError(f"on_error takes a step, got {on_error!r}; use on_error=step(task, ...).")
        receives = {"error": True} if on_error.receives else None
        plans.append(StepPlan(ON_ERROR, len(plans), on_error, (), receives))
    return plans, output


def _child(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


def _compile(node: Shape, path: str, incoming: _Incoming, plans: list[StepPlan]) -> tuple[Any, tuple[str, ...]]:
    """Append ``node``'s steps; returns (template of its result, paths of its last steps)."""
    if isinstance(node, Step):
        receives = incoming.value if node.receives else None
        plans.append(StepPlan(path, len(plans), node, incoming.after, receives))
        return {"step": path}, (path,)
    if isinstance(node, Chain):
        current = incoming
        for index, member in enumerate(node.members):
            value, last = _compile(member, _child(path, index), current, plans)
            current = _Incoming(last, value)
        return current.value, current.after
    if isinstance(node, Group):
        values, lasts = [], []
        for index, member in enumerate(node.members):
            value, last = _compile(member, _child(path, index), incoming, plans)
            values.append(value)
            lasts += last
        return {"list": values}, tuple(lasts)
    value, last = _compile(node.header, _child(path, 0), incoming, plans)
    return _compile(node.callback, _child(path, 1), _Incoming(last, value), plans)


def resolve(template: Any, results: dict[str, Any], error: dict[str, Any] | None = None) -> Any:
    """The value a template stands for: {"step": path} -> that step's result, {"list": [...]} ->
    the list of each, {"error": true} -> what the error callback is told about the failure."""
    if "step" in template:
        return results.get(template["step"])
    if "list" in template:
        return [resolve(t, results, error) for t in template["list"]]
    return error


def describe(shape: Shape) -> dict[str, Any]:
    """The shape as JSON, for display: {"chain": [...]}, {"group": [...]}, {"chord": ...}, {"step": path}."""
    if isinstance(shape, Step):
        return {"step": task_path(shape.task), **({"immutable": True} if not shape.receives else {})}
    if isinstance(shape, Chain):
        return {"chain": [describe(m) for m in shape.members]}
    if isinstance(shape, Group):
        return {"group": [describe(m) for m in shape.members]}
    return {"chord": {"header": describe(shape.header), "callback": describe(shape.callback)}}


def check_json(plan: StepPlan) -> None:
    """Arguments must be JSON, as the task framework stores them; else a WorkflowError naming the step."""
    try:
        json.dumps([list(plan.step.args), plan.step.kwargs], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WorkflowError(
            f"The arguments of step {plan.path} ({task_path(plan.step.task)}) are not JSON ({exc}); "
            "pass strings, numbers, booleans, None, lists and dicts."
        ) from None
