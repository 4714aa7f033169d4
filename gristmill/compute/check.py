"""Checking a feature set spec against its source before it becomes an immutable version.

``gristmill plan`` / ``apply`` run every new spec on a small sample of its source (bounded in rows and
seconds): the timestamp column, the columns and declared types, DSL source columns, SQL that parses and
binds, transformation code that imports and runs, and output columns equal to the declared ones. A source
this machine cannot reach (a protocol without a reader here, missing credentials) is reported as not
checked, with the reason, and does not block registration."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from gristmill.compute.messages import engine_message
from gristmill.compute.sources import is_uri
from gristmill.errors import GristmillError
from gristmill.spec.featureset_spec import SourceType

if TYPE_CHECKING:
    from gristmill.compute.engine import Engine
    from gristmill.spec.featureset_spec import FeatureSetSpec

log = logging.getLogger("gristmill.compute")

SAMPLE_ROWS = 1_000          # source rows a check reads at most
CHECK_SECONDS = 30.0         # a check that takes longer is refused (the transformation hangs or crawls)
CHECK_MEMORY = "1GB"         # the engine's memory limit while checking (a sample needs little; SQL may not)

CheckStatus = Literal["passed", "failed", "not checked"]


@dataclass(frozen=True)
class SourceCheck:
    """The outcome of checking one spec: ``passed`` (detail: what was checked), ``failed`` (detail: the
    error) or ``not checked`` (detail: why the source could not be read from here)."""

    status: CheckStatus
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def unreachable_reason(spec: FeatureSetSpec) -> str | None:
    """Why this machine cannot read the spec's source (None: it can, or the check itself will say why not)."""
    path = spec.source.path
    if spec.source.type in (SourceType.FEATURESET, SourceType.CUSTOM) or not path or not is_uri(path):
        return None
    import fsspec

    protocol = path.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        return f"{protocol}:// sources cannot be read from this machine ({str(exc).splitlines()[0]})"
    shown = without_userinfo(path)               # a URI may carry user:password@: never into a plan or CI log
    try:
        filesystem = fsspec.filesystem(protocol)
        fixed = re.split(r"[*?\[]", path, maxsplit=1)[0].rstrip("/")
        filesystem.exists(fixed.rsplit("/", 1)[0] if fixed != path else fixed)
    except FileNotFoundError:
        return None
    except Exception as exc:  # credentials, network, permissions: anything the store client raises
        reason = (str(exc).splitlines() or [""])[0].replace(path, shown)[:200]
        return f"cannot reach {shown} from this machine: {type(exc).__name__}: {reason}"
    return None


def without_userinfo(uri: str) -> str:
    """``uri`` with a ``user:password@`` in its authority replaced by ``…@`` (a plain ``container@`` of an
    Azure URI names no secret and stays)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@:]*:[^/@]*@", r"\1…@", uri)


def check_spec(engine: Engine, spec: FeatureSetSpec, *, label: str, now: datetime,
               sample_rows: int | None = None, seconds: float | None = None) -> SourceCheck:
    """Compute ``spec`` on at most ``sample_rows`` source rows within ``seconds`` and report the outcome.

    File sources are sampled from their first rows; a custom source is asked for the day (or the longest
    lookback or window) before ``now``. User code that does not finish in time is refused; it keeps running
    in a background thread until it returns (Python cannot stop a thread)."""
    sample_rows = SAMPLE_ROWS if sample_rows is None else sample_rows
    seconds = CHECK_SECONDS if seconds is None else seconds
    reason = unreachable_reason(spec)
    if reason is not None:
        return SourceCheck("not checked", reason)
    outcome: dict[str, SourceCheck] = {}
    connections: list[Any] = []

    def run() -> None:
        try:
            rows = engine.check(spec, sample_rows=sample_rows, window=_custom_window(spec, now), label=label,
                                memory_limit=CHECK_MEMORY, started=connections.append)
            outcome["result"] = SourceCheck("passed", f"{rows} sample row(s) computed")
        except GristmillError as exc:
            outcome["result"] = SourceCheck("failed", engine_message(exc))
        except Exception as exc:  # engine errors on user SQL or data: report them, never a traceback
            outcome["result"] = SourceCheck("failed", f"{label}: {engine_message(exc)}")
        except BaseException as exc:  # user code calling sys.exit() (or raising KeyboardInterrupt) on import or run
            outcome["result"] = SourceCheck("failed", f"{label}: the transformation or source code raised "
                                                      f"{type(exc).__name__}({exc}); code must return rows, not exit")

    thread = threading.Thread(target=run, name=f"check {label}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        from gristmill.compute.duckdb.sandbox import interrupt

        for con in connections:                # SQL stops here; Python code cannot be stopped from outside
            interrupt(con)
        log.warning("%s: the source check is still running after %.0f s; interrupted it", label, seconds)
        if spec.source.path and is_uri(spec.source.path):
            return SourceCheck("not checked", f"{without_userinfo(spec.source.path)} did not answer within "
                                              f"{seconds:.0f} s")
        return SourceCheck("failed", f"{label}: computing a sample of at most {sample_rows} source rows did not "
                                     f"finish within {seconds:.0f} s; make the transformation or source faster, "
                                     "or register without the check (--skip-source-check)")
    return outcome["result"]


def _custom_window(spec: FeatureSetSpec, now: datetime) -> tuple[datetime, datetime] | None:
    """The window a custom source is asked for: the day, or the longest lookback or window, before ``now``."""
    if spec.source.type != SourceType.CUSTOM:
        return None
    lookback = spec.source_lookback.timedelta if spec.source_lookback else timedelta(0)
    span = max(timedelta(days=1), lookback, spec.max_window)
    return now - span, now
