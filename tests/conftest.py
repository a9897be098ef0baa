"""Suite-wide settings."""

from __future__ import annotations

import tqdm

# tqdm starts a process-wide "tqdm_monitor" thread with its first progress bar (opacus and our own
# bars both create some). A stray thread changes behaviour that depends on the process being
# single-threaded, such as the audit verifier's decision to fork, so keep it off in tests.
tqdm.tqdm.monitor_interval = 0
