"""The event contracts in code: question and document events in; answers, tags and dead letters out.

- `codec`: message values decoded as JSON within the depth and value-count limits
  (`decode_json`), and records encoded as compact UTF-8 JSON (`to_bytes`, `encodable_text`).
- `timestamps`: RFC 3339 instants read from `created_at` and written into records (`timestamp`).
- `contracts`: the JSON Schemas (`Contract`, `QUESTION`, `DOCUMENT`) and the incoming events read
  by them, `parse_question` and `parse_document`, within the worker's limits (`InputLimits`).
- `answers`: the answer event of a question and the tags event of a document.
- `dead_letters`: the dead letter of an event the worker gives up on (`dead_letter_event`, and
  `minimal_dead_letter` for when building that fails) and its cutting to fit a record
  (`dead_letter_bytes`, `shortest_dead_letter`).

Each module imports only those above it in this list and `errors`, `config` and `qa.types`.
"""

from .answers import answer_event, tags_event
from .codec import decode_json, encodable_text, to_bytes
from .contracts import (
    DOCUMENT,
    OPTION_TYPES,
    QUESTION,
    Contract,
    DocumentEvent,
    InputLimits,
    QuestionEvent,
    load_schema,
    parse_document,
    parse_question,
)
from .dead_letters import (
    dead_letter_bytes,
    dead_letter_event,
    minimal_dead_letter,
    shortest_dead_letter,
)
from .timestamps import timestamp

__all__ = [
    "DOCUMENT",
    "OPTION_TYPES",
    "QUESTION",
    "Contract",
    "DocumentEvent",
    "InputLimits",
    "QuestionEvent",
    "answer_event",
    "dead_letter_bytes",
    "dead_letter_event",
    "decode_json",
    "encodable_text",
    "load_schema",
    "minimal_dead_letter",
    "parse_document",
    "parse_question",
    "shortest_dead_letter",
    "tags_event",
    "timestamp",
    "to_bytes",
]
