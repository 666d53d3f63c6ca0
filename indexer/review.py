"""The duplicates review: the library's groups as a user pages through them, and what they do
with one (quarantine the others, restore, dismiss). The command line and the web service both
go through `DuplicatesReview`; its write methods expect the caller to hold the writer lock."""

from __future__ import annotations

from dataclasses import dataclass

from .duplicates import (
    BURST,
    DuplicateGroup,
    DuplicateOptions,
    DuplicatesCache,
    dismiss,
    dismissed_sets,
    fingerprint,
    undismiss,
    visible,
)
from .errors import NotIndexedError, QuarantineConflictError
from .library import Library
from .quarantine import QuarantineEntry, Restored, list_entries, quarantine_images, restore_entries


@dataclass(frozen=True)
class GroupPage:
    groups: tuple[DuplicateGroup, ...]
    total: int  # groups of the asked kind (dismissed ones left out unless asked for)
    next_offset: int | None
    stats: dict


class DuplicatesReview:
    def __init__(self, library: Library, options: DuplicateOptions = DuplicateOptions()):
        self.library = library
        self.cache = DuplicatesCache(library, options)

    def all_groups(self, refresh: bool = False) -> tuple[list[DuplicateGroup], dict]:
        return self.cache.groups(refresh)

    def page(self, kind: str | None = None, offset: int = 0, limit: int = 20, dismissed: bool = False,
             refresh: bool = False) -> GroupPage:
        """One page of the groups of `kind` (None: both), in the cache's order (duplicates
        first, largest first); dismissed groups only with `dismissed`."""
        groups, stats = self.all_groups(refresh)
        if not dismissed:
            groups = visible(groups, dismissed_sets(self.library))
        if kind is not None:
            groups = [g for g in groups if g.kind == kind]
        chosen = groups[offset : offset + limit]
        more = offset + limit < len(groups)
        return GroupPage(tuple(chosen), len(groups), offset + limit if more else None, stats)

    def group(self, group_id: str) -> DuplicateGroup:
        for group in self.all_groups()[0]:
            if group.id == group_id:
                return group
        raise NotIndexedError(f"no duplicates group {group_id} (the library changed since? list them again)")

    def dismiss(self, group_id: str) -> DuplicateGroup:
        group = self.group(group_id)
        dismiss(self.library, group)
        return group

    def undismiss(self, group_id: str) -> bool:
        return undismiss(self.library, group_id)

    def quarantine(self, group_id: str, keep: int | None = None) -> tuple[DuplicateGroup, list[QuarantineEntry]]:
        """Move every picture of the group but the one to keep (its suggestion unless `keep`
        names another member) into the quarantine; burst groups are refused."""
        group = self.group(group_id)
        if group.kind == BURST:
            raise QuarantineConflictError(f"group {group_id} holds burst shots: they are shown, not removed")
        keep = group.keep if keep is None else keep
        if keep not in {m.id for m in group.members}:
            raise QuarantineConflictError(f"picture {keep} is not in group {group_id}")
        before = fingerprint(self.library, self.cache.options)
        others = [m.id for m in group.members if m.id != keep]
        entries = quarantine_images(self.library, others, group_id=group.id, kept_id=keep)
        self.cache.without(set(others), before)
        return group, entries

    def restore(self, entry_ids: list[int] | None = None, group_id: str | None = None) -> list[Restored]:
        """Put back quarantined pictures: these entries, or every entry of a group."""
        if group_id is not None:
            entry_ids = [e.id for e in list_entries(self.library, group_id)]
            if not entry_ids:
                raise NotIndexedError(f"nothing of group {group_id} is in the quarantine")
        return restore_entries(self.library, entry_ids or [])

    def quarantined(self, group_id: str | None = None) -> list[QuarantineEntry]:
        return list_entries(self.library, group_id)
