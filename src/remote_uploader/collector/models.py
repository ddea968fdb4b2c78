"""The JSON shapes of the HTTP API, as pydantic models (they also make /openapi.json).

The batch body is not parsed with pydantic: 100,000 records are validated by the hand-written
loop in batch.py, which is several times faster and reports errors in the protocol's format.
`BATCH_SCHEMA` documents that body for OpenAPI (and the fuzz test generates from it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from remote_uploader.protocol import (
    MAX_AGENT_LEN,
    MAX_BATCH_ID_LEN,
    MAX_COUNT,
    MAX_PART_LEN,
    MAX_RECORDS_PER_BATCH,
    MAX_SEQ,
    MAX_SOURCE_LEN,
    PRODUCER_LEN,
)

_TIME = "RFC 3339 time with a UTC offset, e.g. 2024-05-01T12:00:00.000000Z"

RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ip", "count", "first_seen", "last_seen", "source"],
    "properties": {
        "ip": {
            "type": "string",
            "maxLength": 64,
            "description": "IPv4 dotted quad without leading zeros, or IPv6 in RFC 5952 form; "
            "IPv4-mapped IPv6 and unspecified addresses are refused",
        },
        "count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
        "first_seen": {"type": "string", "description": _TIME},
        "last_seen": {"type": "string", "description": _TIME + "; one before first_seen is swapped with it"},
        "source": {"type": "string", "maxLength": MAX_SOURCE_LEN},
    },
}

BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["agent", "batch_id", "sent_at", "records"],
    "properties": {
        "agent": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_AGENT_LEN,
            "description": "must equal the name of the bearer token, unless the batch has a producer: "
            "then it is counted under the token's name",
        },
        "batch_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_BATCH_ID_LEN,
            "description": "stable across retries: a repeated (agent, batch_id) is counted once",
        },
        "sent_at": {"type": "string", "description": _TIME},
        "records": {"type": "array", "maxItems": MAX_RECORDS_PER_BATCH, "items": RECORD_SCHEMA},
        "producer": {
            "type": "string",
            "pattern": f"^[0-9a-f]{{{PRODUCER_LEN[0]},{PRODUCER_LEN[1]}}}$",
            "description": "the agent state directory's random id; with it the batch is recognised by "
            "(producer, seq, part) at any age, and counted under the token's name",
        },
        "seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ, "description": "the batch's number"},
        "part": {
            "type": "string",
            "pattern": f"^[01]{{0,{MAX_PART_LEN}}}$",
            "description": "which half of a split batch: 0, 1, then 00, 01...",
        },
    },
}

_MICROS = "integer microseconds since 1970-01-01T00:00:00Z"

#: Format 2 (media type application/vnd.remote-uploader.v2+json): docs/protocol.md, "Body formats".
BATCH_SCHEMA_V2: dict[str, Any] = {
    "type": "object",
    "required": ["format", "agent", "batch_id", "sent_at", "sources", "groups"],
    "properties": {
        "format": {"const": 2},
        "agent": BATCH_SCHEMA["properties"]["agent"],
        "batch_id": BATCH_SCHEMA["properties"]["batch_id"],
        "sent_at": {"type": "integer", "description": _MICROS},
        "sources": {"type": "array", "items": {"type": "string", "maxLength": MAX_SOURCE_LEN},
                    "description": "the batch's source table; groups name a source by its index"},
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "first_seen", "last_seen", "ip", "count"],
                "properties": {
                    "source": {"type": "integer", "minimum": 0, "description": "an index of sources"},
                    "first_seen": {"type": "integer", "description": _MICROS},
                    "last_seen": {"type": "integer", "description": _MICROS},
                    "ip": {"type": "array", "items": RECORD_SCHEMA["properties"]["ip"]},
                    "count": {"type": "array", "items": RECORD_SCHEMA["properties"]["count"],
                              "description": "as many as ip: count[i] is the count of ip[i]"},
                },
            },
            "description": f"at most {MAX_RECORDS_PER_BATCH} addresses in all groups together",
        },
        "producer": BATCH_SCHEMA["properties"]["producer"],
        "seq": BATCH_SCHEMA["properties"]["seq"],
        "part": BATCH_SCHEMA["properties"]["part"],
    },
}


class FieldErrorOut(BaseModel):
    field: str = Field(description="what is wrong: a JSON path like records[3].ip, or body, query.since...")
    error: str


class ErrorOut(BaseModel):
    detail: list[FieldErrorOut]


STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "version": {"type": "string", "maxLength": 64},
        "queued_batches": {"type": "integer", "minimum": 0},
        "queued_records": {"type": "integer", "minimum": 0},
        "queued_bytes": {"type": "integer", "minimum": 0},
        "oldest_age": {"type": ["number", "null"], "minimum": 0},
        "failing_for": {"type": ["number", "null"], "minimum": 0},  # null or absent: not failing
        "dead_batches": {"type": "integer", "minimum": 0},
        "sources": {"type": "array", "maxItems": 32,
                    "items": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}},
    },
}


class StatusStored(BaseModel):
    agent: str = Field(description="the name the report is kept under: the token's name")
    stored: bool


class BatchAccepted(BaseModel):
    batch_id: str
    accepted: int = Field(description="records in the batch, now held by the collector")
    duplicate: bool = Field(description="true if this batch had been counted before; nothing was added")
    agent: str = Field(description="the name the batch is counted under: the token's name")


class WhoAmI(BaseModel):
    name: str = Field(description="the token's name: what batches sent with it are counted under")
    role: str = Field(description="agent (may send batches) or read")


class Health(BaseModel):
    status: str = Field(description="ok, or unavailable")
    storage: str = Field(description="ok, or why the database cannot be reached")
    version: str


class IpOut(BaseModel):
    ip: str
    count: int
    first_seen: str
    last_seen: str
    agents: int = Field(description="how many agents reported this address")


class IpPage(BaseModel):
    items: list[IpOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last")


class AgentCountOut(BaseModel):
    agent: str
    count: int
    first_seen: str
    last_seen: str


class IpDetailOut(IpOut):
    by_agent: list[AgentCountOut]


class SourceLagOut(BaseModel):
    source: str
    behind: int = Field(description="bytes of the file the agent had not read yet")


class AgentStatusOut(BaseModel):
    """An agent's latest status report (docs/protocol.md, "Agent status")."""

    reported_at: str = Field(description="when the collector received it")
    version: str
    queued_batches: int
    queued_records: int
    queued_bytes: int
    oldest_queued_at: str | None = Field(description="when the oldest queued batch was sealed (null: queue empty)")
    failing_since: str | None = Field(description="since when its uploads failed (null: the last one passed)")
    dead_batches: int
    backing_up: bool = Field(description="batches queued and uploads failing, or the oldest older than agent_lag_warn")
    sources: list[SourceLagOut]


class AgentOut(BaseModel):
    agent: str
    # null (and the counters 0): the agent has sent status reports (heartbeats) only, no batch yet
    first_seen: str | None = Field(description="when its first batch arrived; null: no batch yet")
    last_seen: str | None = Field(description="when its last batch arrived; null: no batch yet")
    batches: int
    duplicates: int
    records: int
    last_batch_id: str | None = Field(description="null: no batch yet")
    last_batch_sent_at: str | None = Field(description="null: no batch yet")
    status: AgentStatusOut | None = Field(None, description="its latest status report; null before the first")


class AgentList(BaseModel):
    items: list[AgentOut]
