"""``plan`` and ``apply``: what registering a folder of entity and feature set YAML would change, and doing it.

The plan has one item per entity and feature set version found (a file that cannot be read counts once,
under the name it gives):

- ``create``: a new version. A new feature set spec is first checked against its source on a small sample
  (``gristmill.compute.check``); a spec that fails is ``invalid`` and nothing is registered;
- ``update``: only mutable fields change (description, tags, stage, materialization settings), listed
  field by field as old → new;
- ``unchanged``;
- ``refuse``: the registered version differs in what it computes (immutable fields, old → new; the fix is
  a new version), or the change would drop materialized data (a store disabled) without
  ``allow_data_loss``;
- ``invalid``: the file, the field, what is wrong and the fix.

Consequences are notes on the item: data a disabled store drops, the next run of a new or changed
schedule, a new version no model uses yet, a source that could not be checked from this machine.

The YAML is the truth: a feature set file without ``materialization_settings`` means every store
disabled. ``apply`` executes the ``create`` and ``update`` items of the same plan and leaves the others
as they are."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.config import CONFIG_FILE_NAME
from gristmill.errors import GristmillError, ImmutableError, NotFoundError, SpecError
from gristmill.spec.entity import Entity
from gristmill.spec.featureset import FeatureSet, MaterializationSettings
from gristmill.spec.refs import VersionRef
from gristmill.spec.yaml_io import read_yaml

if TYPE_CHECKING:
    from gristmill.spec.featureset_spec import FeatureSetSpec
    from gristmill.store import FeatureStore

log = logging.getLogger("gristmill")

PLANNED = ("create", "update", "unchanged", "refuse", "invalid")
DONE = {"create": "created", "update": "updated", "unchanged": "unchanged", "refuse": "refused",
        "invalid": "invalid"}
_FAILED = ("refuse", "refused", "invalid")
_SPEC_FILE_NAMES = ("featuresetspec.yaml", "featuresetspec.yml")
_FEATURE_SET_FILE_NAMES = ("featureset.yaml", "featureset.yml")


@dataclass(frozen=True)
class FieldChange:
    """One changed field: ``field`` (a dotted path such as ``features.amount_7d_sum.type``), old → new."""

    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        old, new = _redacted(self.field, self.old), _redacted(self.field, self.new)
        if old == new and self.old != self.new:
            return f"{self.field}: changed (webhook URLs and e-mail addresses are not shown)"
        return f"{self.field}: {_shown(old)} → {_shown(new)}"


@dataclass(frozen=True)
class PlanItem:
    """What ``plan`` would do (or ``apply`` did) for one entity or feature set version."""

    kind: str            # "entity" | "feature set" | "file" (a file whose kind could not be told)
    ref: str             # name:version (or the file's path when the file gives no name)
    action: str          # plan: create | update | unchanged | refuse | invalid; apply: created | updated | ...
    file: str
    detail: str = ""     # refuse / invalid: what is wrong and the fix
    changes: tuple[FieldChange, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.action in _FAILED


@dataclass
class ApplyPlan:
    """The plan of ``FeatureStore.plan`` or the outcome of ``FeatureStore.apply``: one item per entity and
    feature set version found; ``applied`` tells which."""

    items: list[PlanItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    applied: bool = False

    @property
    def ok(self) -> bool:
        """No item refused or invalid."""
        return not any(item.failed for item in self.items)

    @property
    def has_changes(self) -> bool:
        """Some item creates or updates a version."""
        return any(item.action in ("create", "update", "created", "updated") for item in self.items)

    def count(self, action: str) -> int:
        return sum(1 for item in self.items if item.action == action)

    def item(self, ref: str) -> PlanItem:
        """The item of ``ref`` (``name:version``)."""
        for item in self.items:
            if item.ref == ref:
                return item
        raise KeyError(ref)

    def lines(self) -> list[str]:
        """The plan as text lines: one per item, then its changes, notes and detail indented."""
        lines = []
        for item in self.items:
            lines.append(f"{item.action:>9}  {item.kind} {item.ref}")
            lines.extend(f"{'':11}{change}" for change in item.changes)
            if item.detail:
                lines.extend(f"{'':11}{part}" for part in item.detail.splitlines())
            lines.extend(f"{'':11}note: {note}" for note in item.notes)
        lines.extend(f"  skipped  {path} (neither an entity: index_columns, nor a feature set: specification)"
                     for path in self.skipped)
        return lines

    def summary(self) -> str:
        order = [DONE[a] for a in PLANNED] if self.applied else list(PLANNED)
        counts = ", ".join(f"{self.count(a)} {a}" for a in order if self.count(a))
        skipped = f" ({len(self.skipped)} other YAML file(s) skipped)" if self.skipped else ""
        if not self.items:
            return f"nothing to apply{skipped}"
        return (counts if self.applied or self.has_changes or not self.ok else f"{counts}; nothing to do") + skipped

    def __str__(self) -> str:
        return "\n".join([*self.lines(), self.summary()])


@dataclass
class _Step:
    """A planned item and how to carry it out."""

    index: int
    run: Callable[[], str]


class Planner:
    """Builds the plan of a folder against a store; ``apply`` runs its create and update steps."""

    def __init__(self, store: FeatureStore, *, check_source: bool = True, allow_data_loss: bool = False) -> None:
        self.store = store
        self.check_source = check_source
        self.allow_data_loss = allow_data_loss
        self._entities: dict[str, Entity] = {}
        self._feature_sets: dict[tuple[str, str], FeatureSetSpec] = {}   # planned specs a derived one may read
        self._candidates: dict[tuple[str, str], FeatureSetSpec] = {}
        self._failed: dict[tuple[str, str], str] = {}                     # refs planned invalid (not registered)
        self._waiting: set[tuple[str, str]] = set()                       # refs deferred for their parent

    # -- the plan -------------------------------------------------------------------------------------
    def plan(self, folder: str | Path) -> tuple[ApplyPlan, list[_Step]]:
        root = Path(folder)
        if not root.exists():
            raise SpecError(f"{root}: folder not found; pass the folder holding your entity and feature set YAML")
        if root.is_file() and root.name.lower() in _SPEC_FILE_NAMES:
            raise SpecError(f"{root}: this is a feature set specification; apply the feature set YAML that points at "
                            "it (specification: {path: ...}), or the folder holding both")
        files = [root] if root.is_file() else _yaml_files(root)
        plan = ApplyPlan()
        steps: list[_Step] = []
        entities: list[Path] = []
        feature_sets: list[Path] = []
        for path in files:
            if path.name == CONFIG_FILE_NAME or path.name.lower() in _SPEC_FILE_NAMES:
                continue       # a spec is read (and reported) through the feature set pointing at it
            try:
                data = read_yaml(path)
            except SpecError as exc:
                kind, ref = _named_by_text(path, root)
                plan.items.append(PlanItem(kind, ref, "invalid", str(path), str(exc)))
                continue
            if "specification" in data or path.name.lower() in _FEATURE_SET_FILE_NAMES:
                feature_sets.append(path)       # a FeatureSet.yaml without specification is reported, not skipped
            elif "index_columns" in data and "source" not in data:
                entities.append(path)
            else:
                plan.skipped.append(str(path))
        for path in entities:
            self._add(plan, steps, self._plan_entity(path))
        waiting = feature_sets             # derived feature sets wait for their parent (in the plan or registered)
        while waiting:
            deferred = []
            for path in waiting:
                planned = self._plan_feature_set(path, root, defer_missing_parent=True)
                if planned is None:
                    deferred.append(path)
                else:
                    self._add(plan, steps, self._settled(planned))
            if len(deferred) == len(waiting):
                for path in deferred:
                    planned = self._plan_feature_set(path, root, defer_missing_parent=False)
                    if planned is not None:
                        self._add(plan, steps, self._settled(planned))
                break
            waiting = deferred
        self._refuse_duplicates(plan, steps)
        return plan, steps

    def _settled(self, planned: tuple[PlanItem, Callable[[], str] | None]) -> tuple[PlanItem, Callable[[], str] | None]:
        """Record a planned feature set: derived ones later in the plan read its spec only if it will be
        registered as planned (a refused one stays as registered; an invalid one is not registered at all)."""
        item = planned[0]
        try:
            key = VersionRef.parse(item.ref)
        except SpecError:                       # a file that names no version: no derived set can read it
            return planned
        spec = self._candidates.pop(key, None)
        if item.action in ("create", "update", "unchanged") and spec is not None:
            self._feature_sets[key] = spec
        elif item.action == "invalid":
            self._failed[key] = item.file
        return planned

    @staticmethod
    def _refuse_duplicates(plan: ApplyPlan, steps: list[_Step]) -> None:
        """Two files declaring the same entity or feature set version: both invalid, naming both files."""
        files: dict[tuple[str, str], list[int]] = {}
        for index, item in enumerate(plan.items):
            if item.kind != "file":
                files.setdefault((item.kind, item.ref), []).append(index)
        for (kind, ref), indexes in files.items():
            if len(indexes) < 2:
                continue
            named = ", ".join(plan.items[i].file for i in indexes)
            for i in indexes:
                plan.items[i] = replace(plan.items[i], action="invalid", changes=(), notes=(),
                                        detail=f"{kind} {ref} is declared by {len(indexes)} files ({named}); keep "
                                               "one, or give the others new versions")
            steps[:] = [step for step in steps if step.index not in indexes]

    def apply(self, folder: str | Path) -> ApplyPlan:
        plan, steps = self.plan(folder)
        for step in steps:
            item = plan.items[step.index]
            try:
                result = step.run()
            except ImmutableError as exc:        # registered by someone else since the plan was made
                plan.items[step.index] = replace(item, action="refused", detail=str(exc))
                continue
            except GristmillError as exc:
                plan.items[step.index] = replace(item, action="invalid", detail=str(exc))
                continue
            plan.items[step.index] = replace(item, action=result)
            log.info("apply: %s %s %s", result, item.kind, item.ref)
        plan.items = [item if item.action in DONE.values() else replace(item, action=DONE[item.action])
                      for item in plan.items]
        plan.applied = True
        return plan

    @staticmethod
    def _add(plan: ApplyPlan, steps: list[_Step], planned: tuple[PlanItem, Callable[[], str] | None]) -> None:
        item, run = planned
        plan.items.append(item)
        if run is not None and item.action in ("create", "update", "unchanged"):
            steps.append(_Step(len(plan.items) - 1, run))

    # -- entities -------------------------------------------------------------------------------------
    def _plan_entity(self, path: Path) -> tuple[PlanItem, Callable[[], str] | None]:
        ref = _named_by_text(path, path.parent)[1]
        try:
            entity = Entity.load(path)
        except SpecError as exc:
            return PlanItem("entity", ref, "invalid", str(path), str(exc)), None
        self._entities[entity.ref] = entity
        run = lambda: self.store.register_entity(entity)  # noqa: E731
        try:
            registered = self.store.registry.get_entity(entity.name, entity.version)
        except NotFoundError:
            return PlanItem("entity", entity.ref, "create", str(path)), run
        old, new = registered.to_dict(), entity.to_dict()
        fixed = diff({"index_columns": old.get("index_columns")}, {"index_columns": new.get("index_columns")})
        if fixed:
            return PlanItem("entity", entity.ref, "refuse", str(path),
                            f"entity {entity.ref} is registered with other index_columns; a registered version "
                            f"cannot change them — create a new version (version: "
                            f"{_next_version(self.store.registry.list_entities(include_archived=True), entity.name)} "
                            f"in {path.name})", changes=tuple(fixed)), None
        changes = diff({k: old.get(k) for k in ("description", "tags", "stage")},
                       {k: new.get(k) for k in ("description", "tags", "stage")})
        return PlanItem("entity", entity.ref, "update" if changes else "unchanged", str(path),
                        changes=tuple(changes)), run if changes else None

    # -- feature sets ---------------------------------------------------------------------------------
    def _plan_feature_set(self, path: Path, root: Path, *, defer_missing_parent: bool
                          ) -> tuple[PlanItem, Callable[[], str] | None] | None:
        ref = _named_by_text(path, root)[1]
        store = self.store
        try:
            loaded = FeatureSet.load(path)
            ref = loaded.ref
            spec = loaded.spec
            parent = spec.parent_ref
            if parent is not None:
                parent_ref = str(parent)
                planned_parent = self._feature_sets.get(parent)
                waits_in_turn = parent == (loaded.name, loaded.version) or parent in self._waiting
                if not defer_missing_parent and waits_in_turn and planned_parent is None:
                    raise SpecError(f"{path}: source.path: {parent_ref} is in this folder but waits for its own "
                                    "parent in turn: derived feature sets may not form a cycle "
                                    f"({loaded.ref} → {parent_ref} → ... → {loaded.ref})")
                if parent in self._failed:
                    raise SpecError(f"{path}: source.path: its parent feature set {parent_ref} is invalid in this "
                                    f"plan ({self._failed[parent]}); fix the parent first")
                if planned_parent is not None:
                    spec = spec.with_parent(planned_parent)
                else:
                    try:
                        spec = store.with_parent(spec, loaded.ref)
                    except NotFoundError:
                        if defer_missing_parent:
                            self._waiting.add((loaded.name, loaded.version))
                            return None
                        raise SpecError(f"{path}: source.path: feature set {parent_ref} not found: it is neither "
                                        "registered nor in this folder; a derived feature set reads a registered "
                                        "one — register it first or add its files to this folder") from None
            feature_set = loaded.with_spec(spec)
            self._check_entities(feature_set, path)
            registration = store.registration(feature_set)
        except GristmillError as exc:
            return PlanItem("feature set", ref, "invalid", str(path), str(exc)), None
        self._candidates[(feature_set.name, feature_set.version)] = spec
        allow = self.allow_data_loss
        run = lambda: store.register_feature_set(feature_set, allow_data_loss=allow)  # noqa: E731
        try:
            registered = store.registry.get_feature_set(feature_set.name, feature_set.version)
        except NotFoundError:
            registered = None
        if registered is None:
            return self._plan_new_feature_set(feature_set, path, run)
        immutable = store.immutable_changes(registered, registration, feature_set.entities)
        if immutable:
            following = _next_version(store.registry.list_feature_sets(name=feature_set.name, include_archived=True),
                                      feature_set.name)
            return PlanItem("feature set", feature_set.ref, "refuse", str(path),
                            f"feature set {feature_set.ref} is registered with a different specification; only "
                            "description, tags, stage and materialization_settings can change — create a new "
                            f"version (version: {following} in {path.name})", changes=tuple(immutable)), None
        old_asset, new_asset = registered.asset.to_dict(), feature_set.to_dict()
        for asset in (old_asset, new_asset):      # no settings = every store disabled: show it field by field
            asset["materialization_settings"] = {"offline_enabled": False, "online_enabled": False,
                                                 **(asset.get("materialization_settings") or {})}
        mutable = ("description", "tags", "stage", "materialization_settings")
        changes = diff({k: old_asset.get(k) for k in mutable}, {k: new_asset.get(k) for k in mutable})
        notes: list[str] = []
        moved = registration.spec_folder != registered.spec_folder
        if registered.spec_folder and registration.spec_folder and moved:
            notes.append(f"spec folder is now {registration.spec_folder} (was {registered.spec_folder}); relative "
                         "source paths resolve there")
        losses = self._data_losses(registered.asset, feature_set)
        if losses and not allow:
            return PlanItem("feature set", feature_set.ref, "refuse", str(path),
                            "this change drops materialized data: " + "; ".join(losses) + ". Keep the store enabled "
                            f"in {path.name} (materialization_settings), or apply with --allow-data-loss "
                            "(Python: allow_data_loss=True) to drop it", changes=tuple(changes),
                            notes=tuple(notes)), None
        notes.extend(f"drops {loss}" for loss in losses)
        notes.extend(self._schedule_notes(registered.asset.materialization_settings, feature_set))
        notes.extend(_secret_notes(feature_set))
        return PlanItem("feature set", feature_set.ref, "update" if changes else "unchanged", str(path),
                        changes=tuple(changes), notes=tuple(notes)), run if changes or moved else None

    def _plan_new_feature_set(self, feature_set: FeatureSet, path: Path, run: Callable[[], str]
                              ) -> tuple[PlanItem, Callable[[], str] | None]:
        notes: list[str] = []
        if self.check_source:
            from gristmill.compute.check import check_spec

            outcome = check_spec(self.store.engine, feature_set.spec, label=f"feature set {feature_set.ref}",
                                 now=self.store.now())
            if outcome.failed:
                return PlanItem("feature set", feature_set.ref, "invalid", str(path),
                                f"{outcome.detail}\nthe spec was checked on a sample of its source and nothing was "
                                "registered; fix the spec (or the source) and apply again"), None
            if outcome.status == "not checked":
                notes.append(f"not checked: {outcome.detail}")
        else:
            notes.append("not checked: --skip-source-check")
        notes.extend(self._schedule_notes(None, feature_set))
        notes.extend(_secret_notes(feature_set))
        using = [m.ref for m in self.store.models_using(feature_set.name)]
        if using:
            notes.append(f"no model uses {feature_set.ref} yet (models using other versions of "
                         f"{feature_set.name}: {', '.join(using)})")
        return PlanItem("feature set", feature_set.ref, "create", str(path), notes=tuple(notes)), run

    def _check_entities(self, feature_set: FeatureSet, path: Path) -> None:
        try:
            self.store.check_entities(feature_set, planned=self._entities)
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None

    def _data_losses(self, old: FeatureSet, new: FeatureSet) -> list[str]:
        """What disabling stores (old settings → new) would drop, one text per store that holds data."""
        return [f"{kind} store: {held} ({kind}_enabled: true → false)"
                for kind, held in self.store.data_losses(old, new).items()]

    def _schedule_notes(self, before: MaterializationSettings | None, feature_set: FeatureSet) -> list[str]:
        from gristmill.jobs.schedule import next_run, recurrence_window

        settings = feature_set.materialization_settings
        schedule = settings.schedule if settings else None
        old = before.schedule if before else None
        if schedule is None or schedule == old:
            return []
        if not (settings and (settings.offline_enabled or settings.online_enabled)):
            return [f"schedule {'added' if old is None else 'changed'}, but no store is enabled, so it runs no jobs"]
        try:
            run = next_run(schedule, after=self.store.now())
            start, end = recurrence_window(schedule, delay=feature_set.spec.source_delay, at=run)
        except GristmillError as exc:
            return [f"schedule: {exc}"]
        return [f"schedule {'added' if old is None else 'changed'}: next run {run:%Y-%m-%d %H:%M} UTC materializes "
                f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) (run by gristmill scheduler)"]


# -- helpers --------------------------------------------------------------------------------------------
def diff(old: Any, new: Any, prefix: str = "") -> list[FieldChange]:
    """Field-by-field differences of two YAML-like values; lists of mappings with a ``name`` are matched by
    name (``features.amount_7d_sum.type``), other lists compared whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[FieldChange] = []
        for key in [*old, *(k for k in new if k not in old)]:
            changes.extend(diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key)))
        return changes
    if _named_list(old) and _named_list(new):
        old_by, new_by = {i["name"]: i for i in old}, {i["name"]: i for i in new}
        changes = []
        for name in [*old_by, *(n for n in new_by if n not in old_by)]:
            changes.extend(diff(old_by.get(name), new_by.get(name), f"{prefix}.{name}"))
        if not changes and [i["name"] for i in old] != [i["name"] for i in new]:
            changes.append(FieldChange(f"{prefix} (order)", [i["name"] for i in old], [i["name"] for i in new]))
        return changes
    if old == new:
        return []
    if prefix == "source.path" and isinstance(old, str | None) and isinstance(new, str | None):
        from gristmill.compute.check import without_userinfo

        return [FieldChange(prefix, old and without_userinfo(old), new and without_userinfo(new))]
    if prefix.startswith("source.kwargs.") and _SECRET_NAME.search(prefix.rsplit(".", 1)[-1]):  # never in CI logs
        return [FieldChange(prefix, None if old is None else "(hidden)", None if new is None else "(hidden, changed)")]
    return [FieldChange(prefix or "<value>", old, new)]


def _yaml_files(root: Path) -> list[Path]:
    """The .yaml/.yml files under ``root``, following symbolic links to folders (each real folder once), without
    the store's own ``.gristmill`` folders."""
    import os

    found: list[Path] = []
    seen: set[str] = set()
    for folder, folders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders[:] = sorted(f for f in folders if f != ".gristmill")
        found.extend(Path(folder) / n for n in names if n.endswith((".yaml", ".yml")) and (Path(folder) / n).is_file())
    return sorted(found)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value) and \
        len({i["name"] for i in value}) == len(value)


def _redacted(field: str, value: Any) -> Any:
    """A plan shows webhook URLs and e-mail addresses redacted (plans are pasted into tickets and logs)."""
    from gristmill.auth.redact import redact_email, redact_settings, redact_url

    last = field.rsplit(".", 1)[-1]
    if not field.startswith("materialization_settings") or not isinstance(value, dict | list):
        return value
    if last == "webhooks" and isinstance(value, list):
        return [redact_url(str(url)) for url in value]
    if last == "emails" and isinstance(value, list):
        return [redact_email(str(address)) for address in value]
    if last == "notification" and isinstance(value, dict):
        value = {"notification": value}
    if isinstance(value, dict):
        hidden = redact_settings({"materialization_settings": value})["materialization_settings"]
        return hidden["notification"] if last == "notification" else hidden
    return value


def _secret_notes(feature_set: FeatureSet) -> list[str]:
    """A note when the notification settings refer to ``${NAME}`` variables not set here: they are
    resolved when a notification is sent, so the process that runs jobs needs them."""
    from gristmill.auth.redact import missing_variables

    settings = feature_set.materialization_settings
    notification = settings.notification if settings else None
    missing = missing_variables([*notification.webhooks, *notification.emails]) if notification else []
    if not missing:
        return []
    return [f"notification: environment variable {', '.join(missing)} is not set here; set it where jobs run "
            "(gristmill scheduler, serve, backfill) or these notifications are not delivered"]


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        import json

        text = json.dumps(value, default=str, separators=(", ", ": "), ensure_ascii=False)
        return text if len(text) <= 160 else text[:157] + "..."
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


_SECRET_NAME = re.compile(r"pass|secret|token|credential|key$|apikey|api_key", re.IGNORECASE)
_NAME_LINE = re.compile(r"^name:\s*['\"]?([A-Za-z0-9_.\-]+)['\"]?\s*$", re.MULTILINE)
_VERSION_LINE = re.compile(r"^version:\s*['\"]?([A-Za-z0-9_.\-]+)['\"]?\s*$", re.MULTILINE)


def _named_by_text(path: Path, root: Path) -> tuple[str, str]:
    """(kind, name:version) of a YAML file told from its text, for files that do not parse; falls back to the
    file's path relative to the applied folder."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    first = re.split(r"^---\s*$", text, flags=re.MULTILINE)
    first_document = next((part for part in first if part.strip()), "")
    kind = "feature set" if re.search(r"^specification\s*:", first_document, re.MULTILINE) else \
        "entity" if re.search(r"^index_columns\s*:", first_document, re.MULTILINE) else "file"
    name = _NAME_LINE.search(first_document)
    if name:
        version = _VERSION_LINE.search(first_document)
        return kind, f"{name.group(1)}:{version.group(1) if version else '1'}"
    try:
        shown = str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        shown = path.name
    return kind, shown


def _next_version(assets: list[Any], name: str) -> str:
    numbers = [int(a.version) for a in assets if a.name == name and str(a.version).isdigit()]
    return str(max(numbers) + 1) if numbers else "<a new version>"
