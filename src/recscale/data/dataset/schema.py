"""What a prepared directory is: its schema versions, its marker file, which parts hold interactions,
and what a user should know about one before trusting its metrics.
"""

from __future__ import annotations

from recscale.fsutil import json_marker

SCHEMA_VERSION = 2  # 2: protocol.tie_break recorded; version 1 datasets ordered ties by item id


READABLE_SCHEMAS = (1, 2)


FEW_HELDOUT_USERS = 1_000  # below this, a vae split's metrics carry wide intervals: say so


is_prepared = json_marker("meta.json", "schema_version", "protocol", "files", "counts")


def dataset_notes(meta: dict) -> list[str]:
    """What a user should know about a prepared dataset before trusting its metrics."""
    notes = []
    counts = meta["counts"]
    if meta["protocol"]["name"] == "vae" and counts.get("test_users", FEW_HELDOUT_USERS) < FEW_HELDOUT_USERS:
        notes.append(f"only {counts['test_users']} validation and {counts['test_users']} test users are held out "
                     f"(10% of the users at most, by default): their metrics carry wide 95% intervals; "
                     f"--heldout-users N holds out more")
    for part, cold in meta["protocol"].get("cold", {}).items():  # temporal: what the cut leaves unscorable
        notes.append(f"{part}: {cold['new_users']:,} of its {cold['users']:,} users have no training interaction "
                     f"(history models fold them in; {cold['users_without_history']:,} have nothing before it and "
                     f"no model can score them); {cold['new_item_interactions']:,} interactions with "
                     f"{cold['new_items']:,} items first seen after training are not among its targets")
    return notes


def interaction_parts(names) -> list[str]:
    """The parts that hold interactions (not the sampled negatives)."""
    return [name for name in names if not name.endswith("_negatives")]
