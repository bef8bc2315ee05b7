"""Probes for the flow job's actors, put in place by a test (outside the product code).

:func:`group_stage_meeting` makes the job's fused ``GroupStage`` wait, on each actor's first group, until that many
actors have started a group: so that a test of "the shards of one run are written by several worker processes" does
not depend on how fast the second actor comes up. Without it, on a loaded machine the first actor could take every
group before the second was ready (the job hands each actor one group at a time, so once the first holds a group,
the next goes to the second).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def group_stage_meeting(meeting_dir: str, actors: int, timeout_s: float = 120.0) -> type:
    """A ``GroupStage`` subclass whose actors each wait on their first group until ``actors`` of them (counted by
    files under ``meeting_dir``) have started one, or ``timeout_s`` passed. Defined here, in a function, so that
    Ray pickles the class with the folder it names (a module-level class would travel by reference, without it)."""
    from pipeline.dataset.stages import GroupStage

    class GroupStageMeeting(GroupStage):
        def __call__(self, row):
            if not getattr(self, "_met", False):
                self._met = True
                folder = Path(meeting_dir)
                (folder / str(os.getpid())).touch()
                deadline = time.monotonic() + timeout_s
                while len(os.listdir(folder)) < actors and time.monotonic() < deadline:
                    time.sleep(0.05)
            return super().__call__(row)

    return GroupStageMeeting
