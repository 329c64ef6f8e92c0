"""The wire contract of control API v1: the typed bodies (`v1`) and their one strict JSON
codec (`codec`). Pure data and parsing, no I/O: the server adapter, both clients and the
use cases share these types, so one JSON object has one name everywhere."""
