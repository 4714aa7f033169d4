"""What a principal may see, for the REST routes and the UI pages alike.

- A feature set the caller may not read (``catalog.read``) answers exactly like a missing one: the same
  404 and the same message, whose lists and suggestions only name what the caller may read, so a
  refusal is no oracle of what exists (the refusal is still audited).
- A model is visible to whoever may read every feature set of this store it uses (another store's
  feature sets are that store's to judge); one using only other stores' features needs a store-wide
  read.
- Lists are filtered first and cut to the limit after, reading the registry a page at a time.
- Secrets in a feature set's settings (webhook URLs, e-mail addresses) are shown in full to its Owners
  only (``gristmill.auth.redact``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gristmill.auth import AccessDeniedError, Action, Resource
from gristmill.auth.redact import redact_settings
from gristmill.auth.roles import STORE
from gristmill.errors import NotFoundError

if TYPE_CHECKING:
    from gristmill.auth import AccessRecords
    from gristmill.registry.materialization import JobRecord
    from gristmill.spec.featureset import FeatureSet
    from gristmill.store import FeatureStore

__all__ = ["Visibility", "feature_set_resource"]


def feature_set_resource(feature_set: FeatureSet) -> Resource:
    """The resource a feature set version is checked as: its name, version and entity names."""
    return Resource("featureset", feature_set.name, feature_set.version,
                    tuple(ref.name for ref in feature_set.entity_refs))


class Visibility:
    """The visibility rules of one server (``auth=False``: everything is visible to everyone)."""

    def __init__(self, store: FeatureStore, access: AccessRecords, *, auth: bool) -> None:
        self.store = store
        self.access = access
        self.auth = auth

    def may(self, principal: str, action: Action, resource: Resource) -> bool:
        return not self.auth or self.access.allowed(principal, action, resource)

    def resource(self, name: str, version: str) -> Resource:
        """The resource of a registered feature set version (``NotFoundError`` naming everything: for
        internal use; callers' errors come from ``feature_set``)."""
        return feature_set_resource(self.store._cached_feature_set(name, version))

    def feature_set(self, principal: str, name: str, version: str) -> Resource:
        """The resource of ``name:version`` when ``principal`` may read it; else the ``NotFoundError`` a
        missing one gets (the refusal is audited all the same). The route then checks its own action."""
        try:
            resource = self.resource(name, version)
        except NotFoundError:
            raise self.not_found(principal, name, version) from None
        if self.auth:
            try:
                self.access.check(principal, Action.READ_CATALOG, resource)
            except AccessDeniedError:
                raise self.not_found(principal, name, version) from None
        return resource

    def not_found(self, principal: str, name: str, version: str) -> NotFoundError:
        """The error for a feature set ``principal`` cannot see, naming only what it may read."""
        readable = {(fs.name, fs.version) for fs in self.store.list_feature_sets(include_archived=True)
                    if self.may(principal, Action.READ_CATALOG, feature_set_resource(fs))}
        return self.store.registry.not_found("feature set", name, version,
                                             visible=lambda n, v: (n, v) in readable)

    def owner(self, principal: str, resource: Resource) -> bool:
        """Whether ``principal`` owns ``resource`` (may manage its access): it then sees secrets."""
        return self.may(principal, Action.MANAGE_ACCESS, resource)

    def shown(self, principal: str, feature_set: FeatureSet, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` (a feature set's dict) as ``principal`` may see it: secrets redacted unless an Owner."""
        return data if self.owner(principal, feature_set_resource(feature_set)) else redact_settings(data)

    # -- models ---------------------------------------------------------------------------------------
    def model_readable(self, principal: str, model: Any) -> bool:
        """Whether ``principal`` may read every feature set of this store that ``model`` uses."""
        local = []
        for feature in model.retrieval_spec.features:
            ref = feature.feature_ref
            if ref.store and ref.store != self.store.name:
                continue                                  # another store's: that store decides
            if ref.feature_set_ref not in local:
                local.append(ref.feature_set_ref)
        if not local:
            return self.may(principal, Action.READ_CATALOG, STORE)
        for name, version in local:
            try:
                resource = self.resource(name, version)
            except NotFoundError:
                resource = Resource("featureset", name, version)
            if not self.may(principal, Action.READ_CATALOG, resource):
                return False
        return True

    def model(self, principal: str, name: str, version: str) -> Any:
        """The model ``name:version`` when ``principal`` may read it; else the error a missing one gets."""
        visible = {(m.name, m.version) for m in self.store.list_models() if self.model_readable(principal, m)}
        try:
            found = self.store.get_model(name, version)
        except NotFoundError:
            found = None
        if found is None or (found.name, found.version) not in visible:
            if found is not None:                        # audit the refusal, answer as if missing
                self._audit_refusal(principal, Resource("model", name, version))
            raise self.store.registry.not_found("model", name, version, visible=lambda n, v: (n, v) in visible)
        return found

    def _audit_refusal(self, principal: str, resource: Resource) -> None:
        """Record that ``principal`` was refused reading ``resource`` (throttled like every refusal)."""
        with contextlib.suppress(AccessDeniedError):
            self.access.check(principal, Action.READ_CATALOG, resource)

    # -- jobs -----------------------------------------------------------------------------------------
    def job_resource(self, job: JobRecord) -> Resource:
        try:
            return self.resource(job.feature_set, job.version)
        except NotFoundError:
            return Resource("featureset", job.feature_set, job.version)

    def job(self, principal: str, job_id: str) -> tuple[JobRecord, Resource]:
        """A job and its resource when ``principal`` may read its feature set's catalog; else the error a
        missing job gets (the route then checks its own action)."""
        record = self.store.get_job(job_id)
        resource = self.job_resource(record)
        if not self.may(principal, Action.READ_CATALOG, resource):
            self._audit_refusal(principal, resource)
            raise NotFoundError(f"job '{job_id}' not found; list jobs to see their ids")
        return record, resource

    def jobs(self, principal: str, *, action: Action = Action.READ_JOBS, feature_set: str | None = None,
             version: str | None = None, status: str | None = None, limit: int = 100) -> list[JobRecord]:
        """The newest ``limit`` jobs ``principal`` may see (``action`` on their feature set): filtered first,
        then cut, reading the registry a page at a time."""
        found: list[JobRecord] = []
        if limit <= 0:
            return found
        for job in self._readable_jobs(principal, action, feature_set=feature_set, version=version, status=status):
            found.append(job)
            if len(found) >= limit:
                break
        return found

    def _readable_jobs(self, principal: str, action: Action, **filters: Any) -> Iterator[JobRecord]:
        readable: dict[str, bool] = {}
        for job in self.store.materializer.records.iter_jobs(**filters):
            if job.ref not in readable:
                readable[job.ref] = self.may(principal, action, self.job_resource(job))
            if readable[job.ref]:
                yield job
