"""tqdm bars that also report to an orchestrator.

When SEGGEN_PROGRESS_FILE is set (the Prefect tasks set it for the stage they run), every bar
writes its state there as JSON about once a second, so the task can show progress in the UI
without parsing terminal output.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm import tqdm as _tqdm

PROGRESS_ENV = "SEGGEN_PROGRESS_FILE"


class tqdm(_tqdm):  # noqa: N801 - drop-in for tqdm.tqdm
    def __init__(self, *args, **kwargs):
        self._report_to = os.environ.get(PROGRESS_ENV)
        self._reported = 0.0
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        out = super().update(n)
        if self._report_to and time.monotonic() - self._reported >= 1.0:
            self._report()
        return out

    def close(self):
        if getattr(self, "_report_to", None) and not getattr(self, "_closed_report", False):
            self._closed_report = True
            self._report()
        super().close()

    def _report(self) -> None:
        self._reported = time.monotonic()
        d = self.format_dict
        rate = d.get("rate") or (d["n"] / d["elapsed"] if d.get("elapsed") else None)
        remaining = (d["total"] - d["n"]) / rate if rate and d.get("total") else None
        state = {
            "desc": d.get("prefix") or "",
            "n": d["n"],
            "total": d.get("total"),
            "unit": d.get("unit", "it"),
            "rate": rate,
            "eta_s": remaining,
            "elapsed_s": d.get("elapsed"),
        }
        path = Path(self._report_to)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
        except OSError:  # progress is best effort: never fail a stage over it
            pass
