"""A stored policy document version: `PolicyVersion`.

Versions count up from 1 and are never changed; the store keeps a pointer to the current one.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from rustynet.domain.record_fields import aware_utc


@attrs.frozen
class PolicyVersion:
    """One stored policy document; versions count up from 1 and are never changed."""

    version: int = attrs.field(validator=attrs.validators.instance_of(int))
    document: str = attrs.field(validator=attrs.validators.instance_of(str))
    created_at: datetime = attrs.field(validator=aware_utc)
    author: str = attrs.field(validator=attrs.validators.instance_of(str))
