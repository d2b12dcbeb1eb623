"""The ingest report: what one file read, kept and rejected (by reason), and its summary log line."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

# the per-file summary (rows read/kept/quarantined): a command that prints it silences this one
summary_logger = logging.getLogger("seqanom_core.ingest.summary")


def _log_summary(report: IngestReport) -> None:
    """Log a file's ingest summary: a warning when any row was rejected, else info."""
    (summary_logger.warning if sum(report.rejected.values()) else summary_logger.info)(
        "%s", report.summary())


@dataclass
class IngestReport:
    """What one ingest read, kept and rejected (by reason)."""

    source: str
    format: str
    rows_read: int
    rows_kept: int
    rejected: dict[str, int]
    quarantine_path: str | None = None

    def summary(self) -> str:
        """Return a one-line human summary of the ingest."""
        name = Path(self.source).name
        text = f"{name}: {self.rows_read:,} rows read, {self.rows_kept:,} kept"
        total = sum(self.rejected.values())
        if total:
            parts = ", ".join(f"{n:,} {reason}" for reason, n in self.rejected.items())
            text += f", {total:,} quarantined ({parts})"
            if self.quarantine_path:
                text += f"; rejected rows in {self.quarantine_path}"
        return text

    def to_dict(self) -> dict:
        """Return the report as a JSON-ready dict."""
        return asdict(self)
